"""Convert dlib's face-recognition ResNet into an ONNX graph: uint8 RGB chips (N,150,150,3) -> 128-D descriptors."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cluster.models.dlib_reader import DlibFormatError, DlibLayer, read_dlib_layers

CHIP_SIZE = 150
# input_rgb_image_sized<150> in dlib's dnn_face_recognition_ex.cpp subtracts these means and divides by 256.
DLIB_RGB_MEAN = (122.782, 117.001, 104.298)
DLIB_INPUT_SCALE = 256.0
# The newest IR version that the onnxruntime releases we support can load (1.31 reads up to 13).
ONNX_IR_VERSION = 10


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out


def _conv_with_affine(graph: _Graph, x: str, conv: DlibLayer, affine: DlibLayer, channels: int) -> tuple[str, int]:
    filters, kh, kw, sy, sx, py, px = conv.ints
    assert conv.params is not None and affine.params is not None
    n_weights = filters * channels * kh * kw
    if conv.params.size != n_weights + filters:
        raise DlibFormatError(f"conv params {conv.params.size}, expected {n_weights + filters}")
    weight = conv.params[:n_weights].reshape(filters, channels, kh, kw)
    bias = conv.params[n_weights:]
    gamma, beta = affine.params[:filters], affine.params[filters:]
    # Fold the affine layer (dlib's frozen batch norm) into the convolution.
    weight = (weight * gamma[:, None, None, None]).astype(np.float32)
    bias = (bias * gamma + beta).astype(np.float32)
    out = graph.node(
        "Conv",
        [x, graph.const("w", weight), graph.const("b", bias)],
        kernel_shape=[kh, kw],
        strides=[sy, sx],
        pads=[py, px, py, px],
    )
    return out, filters


def _out_size(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


def _pad_to(graph: _Graph, x: str, shape: tuple[int, int, int], target: tuple[int, int, int]) -> str:
    if shape == target:
        return x
    # dlib's add_prev treats the smaller tensor as zero outside its extent, so pad at the end of each axis.
    pads = [0, 0, 0, 0, 0, target[0] - shape[0], target[1] - shape[1], target[2] - shape[2]]
    return graph.node("Pad", [x, graph.const("pads", np.array(pads, dtype=np.int64))], mode="constant")


def build_dlib_resnet(data: bytes) -> onnx.ModelProto:
    """Build the ONNX model from the bytes of dlib_face_recognition_resnet_model_v1.dat."""
    layers = read_dlib_layers(data)
    graph = _Graph()
    x = graph.node("Cast", ["chips"], to=TensorProto.FLOAT)
    x = graph.node("Sub", [x, graph.const("mean", np.array(DLIB_RGB_MEAN, dtype=np.float32))])
    x = graph.node("Div", [x, graph.const("scale", np.array(DLIB_INPUT_SCALE, dtype=np.float32))])
    x = graph.node("Transpose", [x], perm=[0, 3, 1, 2])
    shape = (3, CHIP_SIZE, CHIP_SIZE)
    block_input: tuple[str, tuple[int, int, int]] = (x, shape)
    pooled_shortcut: tuple[str, tuple[int, int, int]] | None = None
    i = 0
    while i < len(layers):
        layer = layers[i]
        if layer.kind == "con_4":
            if i + 1 >= len(layers) or layers[i + 1].kind != "affine_":
                raise DlibFormatError("every convolution must be followed by an affine layer")
            _, kh, kw, sy, sx, py, px = layer.ints
            x, channels = _conv_with_affine(graph, x, layer, layers[i + 1], shape[0])
            shape = (channels, _out_size(shape[1], kh, sy, py), _out_size(shape[2], kw, sx, px))
            i += 2
            continue
        if layer.kind == "relu_":
            x = graph.node("Relu", [x])
            if layers[i - 1].kind == "add_prev_":
                # The ReLU after a residual add closes the block: its output is the next block's tag1.
                block_input = (x, shape)
                pooled_shortcut = None
        elif layer.kind in ("max_pool_2", "avg_pool_2"):
            kh, kw, sy, sx, py, px = layer.ints
            if kh == 0:
                x = graph.node("GlobalAveragePool", [x])
                x = graph.node("Flatten", [x])
                shape = (shape[0], 1, 1)
            elif layer.kind == "max_pool_2":
                x = graph.node("MaxPool", [x], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
                shape = (shape[0], _out_size(shape[1], kh, sy, py), _out_size(shape[2], kw, sx, px))
                block_input = (x, shape)
            else:
                # avg_pool<skip1<...>> in residual_down: pool the block's input for the shortcut.
                src, src_shape = block_input
                pooled = graph.node(
                    "AveragePool", [src], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px]
                )
                pooled_shortcut = (
                    pooled,
                    (src_shape[0], _out_size(src_shape[1], kh, sy, py), _out_size(src_shape[2], kw, sx, px)),
                )
        elif layer.kind == "add_prev_":
            other, other_shape = pooled_shortcut or block_input
            target = (max(shape[0], other_shape[0]), max(shape[1], other_shape[1]), max(shape[2], other_shape[2]))
            x = graph.node("Add", [_pad_to(graph, x, shape, target), _pad_to(graph, other, other_shape, target)])
            shape = target
        elif layer.kind == "fc_2":
            outputs, inputs = layer.ints
            assert layer.params is not None
            weight = layer.params.reshape(inputs, outputs)
            x = graph.node("MatMul", [x, graph.const("fc", weight)])
        i += 1
    graph.nodes[-1].output[0] = "descriptors"
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "dlib_face_recognition_resnet_model_v1",
            [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["N", CHIP_SIZE, CHIP_SIZE, 3])],
            [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["N", 128])],
            graph.inits,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="facegrid",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model
