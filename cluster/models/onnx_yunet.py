"""Rebuild OpenCV Zoo's YuNet face detector (2023mar, int8, block-quantized) as an fp32 ONNX graph with a dynamic
batch and image size: uint8 RGB images (N, H, W, 3), H and W multiples of 32 -> per stride 8, 16 and 32, a score
pair (class, objectness), box offsets and five landmarks for every cell. Decoding cells into faces is the
pipeline's (cluster/pipeline/detect_yunet.py), the same arithmetic as OpenCV's `cv2.FaceDetectorYN`."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cluster.models.onnx_dlib import ONNX_IR_VERSION
from cluster.models.onnx_sface import _fold_constant_weights, _replace_nodes
from cluster.pipeline.detect_yunet import HEADS, STRIDES


class YuNetFormatError(ValueError):
    """The file is not the YuNet graph this converter knows."""


def build_yunet(data: bytes) -> onnx.ModelProto:
    """fp32 YuNet reading our image interface; the graph keeps YuNet's own input scale (BGR, 0-255)."""
    model = onnx.load_from_string(data)
    graph = model.graph
    outputs = [o.name for o in graph.output]
    expected = [f"{head}_{stride}" for head in HEADS for stride in STRIDES]
    if len(graph.input) != 1 or sorted(outputs) != sorted(expected):
        raise YuNetFormatError(f"expected one input and the outputs {expected}, found {outputs}")
    image_name = graph.input[0].name
    _fold_constant_weights(graph)
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:  # the heads reshape to (1, cells, k): keep the batch dimension instead (0 copies it)
        if node.op_type == "Reshape" and node.input[1] in values:
            shape = numpy_helper.to_array(values[node.input[1]])
            if shape.tolist()[:2] == [1, -1]:
                new_name = f"{node.input[1]}_batched"
                if new_name not in values:
                    batched = numpy_helper.from_array(np.array([0, -1, shape[2]], dtype=np.int64), new_name)
                    graph.initializer.append(batched)
                    values[new_name] = batched
                node.input[1] = new_name
    _replace_nodes(graph, list(graph.node))  # drops the head shapes no Reshape reads any more
    # Our images are uint8 RGB NHWC; YuNet reads float NCHW in OpenCV's BGR order, unscaled.
    graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_order"))
    front = [
        helper.make_node("Cast", ["images"], ["images_float"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["images_float", "bgr_order"], ["images_bgr"], axis=3),
        helper.make_node("Transpose", ["images_bgr"], [image_name], perm=[0, 3, 1, 2]),
    ]
    rebuilt = helper.make_model(
        helper.make_graph(
            front + list(graph.node),
            "face_detection_yunet_2023mar",
            [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", "H", "W", 3])],
            [
                helper.make_tensor_value_info(f"{head}_{stride}", TensorProto.FLOAT, ["N", f"cells_{stride}", k])
                for head, k in HEADS.items()
                for stride in STRIDES
            ],
            list(graph.initializer),
        ),
        opset_imports=list(model.opset_import),
        producer_name="facegrid",
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(rebuilt)
    return rebuilt
