"""Rebuild OpenCV Zoo's SFace (int8, block-quantized) as an fp32 ONNX graph: uint8 RGB chips (N,112,112,3) -> 128-D."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cluster.models.onnx_dlib import ONNX_IR_VERSION
from cluster.pipeline.align import ARCFACE_ALIGNER
from cluster.pipeline.embed import EMBEDDING_DIM

CHIP_SIZE = ARCFACE_ALIGNER.chip_size


class SFaceFormatError(ValueError):
    """The file is not the SFace graph this converter knows."""


def dequantize_blockwise(
    quantized: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int, block: int
) -> np.ndarray:
    """DequantizeLinear (opset 21) with blocked scales: each run of `block` values along `axis` shares one scale."""
    if block <= 0:  # per-axis or per-tensor quantization
        shape = [1] * quantized.ndim
        if scales.ndim == 1 and scales.size > 1:
            shape[axis] = scales.size
        scale, zero = scales.reshape(shape), zero_points.reshape(shape)
    else:
        length = quantized.shape[axis]
        scale = np.repeat(scales, block, axis=axis).take(np.arange(length), axis=axis)
        zero = np.repeat(zero_points, block, axis=axis).take(np.arange(length), axis=axis)
    return ((quantized.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(helper.get_attribute_value(attribute))
    return default


def _fold_constant_weights(graph: onnx.GraphProto) -> None:
    """Replace DequantizeLinear (and the Reshape after it) of constant weights by fp32 initializers, in place.

    Measured here: the same outputs within 4e-7 as the int8 graph, and faster (no dequantize on every call)."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    folded: dict[str, np.ndarray] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        sources = [folded[x] if x in folded else values.get(x) for x in node.input]
        constant = [s for s in sources if s is not None]
        if node.op_type == "DequantizeLinear" and len(constant) == 3:
            quantized, scales, zeros = constant
            axis = _int_attribute(node, "axis", 1) % quantized.ndim
            block = _int_attribute(node, "block_size", 0)
            folded[node.output[0]] = dequantize_blockwise(quantized, scales, zeros, axis, block)
        elif node.op_type == "Reshape" and node.input[0] in folded and len(constant) == 2:
            folded[node.output[0]] = folded.pop(node.input[0]).reshape(constant[1].astype(np.int64))
        else:
            kept.append(node)
    if not folded:
        raise SFaceFormatError("no quantized constant weights found: not the int8 SFace graph")
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in folded.items())
    _replace_nodes(graph, kept)


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """The graph's nodes become `nodes`; initializers none of them reads are dropped."""
    del graph.node[:]
    graph.node.extend(nodes)
    consumed = {x for n in nodes for x in n.input}
    for init in [i for i in graph.initializer if i.name not in consumed]:
        graph.initializer.remove(init)


def _channel_scale(graph: onnx.GraphProto, x: str, scale: np.ndarray, y: str) -> onnx.NodeProto:
    """y = scale * x per channel, as a BatchNormalization (which ONNX Runtime runs in its blocked NCHWc layout)."""
    scale = scale.reshape(-1).astype(np.float32)
    zeros, ones = np.zeros_like(scale), np.ones_like(scale)
    names = [f"{y}_{part}" for part in ("scale", "bias", "mean", "var")]
    graph.initializer.extend(
        numpy_helper.from_array(v, n) for v, n in zip((scale, zeros, zeros, ones), names, strict=True)
    )
    return helper.make_node("BatchNormalization", [x, *names], [y], epsilon=0.0)


def _prelu_as_scaled_relu(graph: onnx.GraphProto) -> None:
    """PRelu(x) = (1 - a) * relu(x) + a * x, exactly, in place.

    ONNX Runtime runs PRelu with per-channel slopes outside its blocked NCHWc layout: on one core PRelu and the
    layout reorders around it took 71% of SFace's time. Relu, per-channel scales and Add all stay blocked (the
    scales become depthwise 1x1 convolutions, the Add their fused sum): 36 -> 23-28 ms a face, measured here."""
    slopes = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in slopes:
            nodes.append(node)
            continue
        x, y, slope = node.input[0], node.output[0], slopes[node.input[1]]
        nodes += [
            helper.make_node("Relu", [x], [f"{y}_relu"]),
            _channel_scale(graph, f"{y}_relu", 1 - slope, f"{y}_positive"),
            _channel_scale(graph, x, slope, f"{y}_linear"),
            helper.make_node("Add", [f"{y}_positive", f"{y}_linear"], [y]),
        ]
    _replace_nodes(graph, nodes)


def build_sface(data: bytes) -> onnx.ModelProto:
    """fp32 SFace with our chip interface; the graph keeps SFace's own (x - 127.5) / 128 normalisation."""
    model = onnx.load_from_string(data)
    graph = model.graph
    real_inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    consumed = {x for n in graph.node for x in n.input}
    # As shipped the graph also lists the float weights as inputs that nothing consumes; ONNX Runtime refuses that.
    images = [i for i in real_inputs if i.name in consumed]
    if len(images) != 1 or len(graph.output) != 1:
        raise SFaceFormatError(f"expected one image input and one output, found {[i.name for i in images]}")
    image_name, output_name = images[0].name, graph.output[0].name
    _fold_constant_weights(graph)
    _prelu_as_scaled_relu(graph)
    # Our chips are uint8 NHWC like every embedder's; SFace reads float NCHW, RGB, 0-255.
    front = [
        helper.make_node("Cast", ["chips"], ["chips_float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["chips_float"], [image_name], perm=[0, 3, 1, 2]),
    ]
    for node in graph.node:  # the output is renamed; whatever produced it writes the new name
        node.output[:] = ["descriptors" if o == output_name else o for o in node.output]
    nodes = front + list(graph.node)
    rebuilt = helper.make_model(
        helper.make_graph(
            nodes,
            "face_recognition_sface_2021dec",
            [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["N", CHIP_SIZE, CHIP_SIZE, 3])],
            [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["N", EMBEDDING_DIM])],
            list(graph.initializer),
        ),
        opset_imports=list(model.opset_import),
        producer_name="facegrid",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(rebuilt)
    return rebuilt
