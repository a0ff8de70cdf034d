"""Build MTCNN's P-, R- and O-Net as ONNX graphs from the Keras weight lists shipped in the `mtcnn` package."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cluster.models.onnx_dlib import ONNX_IR_VERSION

# Layer plans mirror mtcnn/network/{pnet,rnet,onet}.py: (kind, pool kernel, pool stride, pool padding).
_CONV_STACKS: dict[str, list[tuple[int, int, str] | None]] = {
    "pnet": [(2, 2, "same"), None, None],
    "rnet": [(3, 2, "same"), (3, 2, "valid"), None],
    "onet": [(3, 2, "same"), (3, 2, "valid"), (2, 2, "same"), None],
}
# Output heads in weight order, and whether each ends in a softmax.
_HEADS: dict[str, list[tuple[str, bool]]] = {
    "pnet": [("bbox_reg", False), ("prob", True)],
    "rnet": [("bbox_reg", False), ("prob", True)],
    "onet": [("bbox_reg", False), ("landmarks", False), ("prob", True)],
}
INPUT_SIZES: dict[str, int | None] = {"pnet": None, "rnet": 24, "onet": 48}


def build_mtcnn_net(name: str, weights: Sequence[np.ndarray]) -> onnx.ModelProto:
    """One MTCNN stage: input NHWC float32 normalised to [-1, 1]; outputs as the Keras model gives them."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    counter = iter(range(10_000))

    def const(value: np.ndarray) -> str:
        label = f"c{next(counter)}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), label))
        return label

    def node(op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or f"{op.lower()}{next(counter)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    w = list(weights)
    x = node("Transpose", ["images"], perm=[0, 3, 1, 2])
    for pool in _CONV_STACKS[name]:
        kernel, bias, alpha = w.pop(0), w.pop(0), w.pop(0)
        x = node("Conv", [x, const(kernel.transpose(3, 2, 0, 1)), const(bias)], kernel_shape=list(kernel.shape[:2]))
        x = node("PRelu", [x, const(alpha.reshape(-1, 1, 1))])
        if pool is not None:
            size, stride, padding = pool
            auto_pad = "SAME_UPPER" if padding == "same" else "VALID"
            x = node("MaxPool", [x], kernel_shape=[size, size], strides=[stride, stride], auto_pad=auto_pad)
    if name == "pnet":
        heads = [
            node("Conv", [x, const(w[i].transpose(3, 2, 0, 1)), const(w[i + 1])], kernel_shape=[1, 1]) for i in (0, 2)
        ]
        outputs = []
        for (label, softmax), head in zip(_HEADS[name], heads, strict=True):
            if softmax:
                head = node("Softmax", [head], axis=1)
            outputs.append(node("Transpose", [head], label, perm=[0, 2, 3, 1]))
        out_shapes: list[list[str | int]] = [["N", "H", "W", 4], ["N", "H", "W", 2]]
    else:
        # Keras permutes NHWC to NWHC before flattening; from NCHW that is perm (0, 3, 2, 1).
        x = node("Flatten", [node("Transpose", [x], perm=[0, 3, 2, 1])])
        dense, bias, alpha = w.pop(0), w.pop(0), w.pop(0)
        x = node("PRelu", [node("Gemm", [x, const(dense), const(bias)]), const(alpha)])
        out_shapes = []
        for (label, softmax), i in zip(_HEADS[name], range(0, len(w), 2), strict=True):
            head = node("Gemm", [x, const(w[i]), const(w[i + 1])], None if softmax else label)
            if softmax:
                node("Softmax", [head], label, axis=1)
            out_shapes.append(["N", w[i].shape[1]])
    fixed = INPUT_SIZES[name]
    side: list[str | int] = [fixed, fixed] if fixed else ["H", "W"]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            f"mtcnn_{name}",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *side, 3])],
            [
                helper.make_tensor_value_info(label, TensorProto.FLOAT, shape)
                for (label, _), shape in zip(_HEADS[name], out_shapes, strict=True)
            ],
            inits,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="facegrid",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model
