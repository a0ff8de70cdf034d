"""Rebuild OpenCV Zoo's YuNet face detector (2023mar, int8, block-quantized) as an fp32 ONNX graph with a dynamic
batch and image size: uint8 RGB images (N, H, W, 3), H and W multiples of 32 -> per stride 8, 16 and 32, a score
pair (class, objectness), box offsets and five landmarks for every cell. Decoding cells into faces is
`decode_yunet`, the same arithmetic as OpenCV's `cv2.FaceDetectorYN`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cluster.models.onnx_dlib import ONNX_IR_VERSION
from cluster.models.onnx_sface import _fold_constant_weights, _replace_nodes

STRIDES = (8, 16, 32)
HEADS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
# What OpenCV's FaceDetectorYN keeps by default: cells scoring at least this, boxes overlapping less than this.
SCORE_THRESHOLD = 0.9
NMS_THRESHOLD = 0.3
TOP_K = 5000


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


@dataclass(frozen=True)
class Detections:
    """One image's faces: boxes (x, y, w, h), five landmarks (x, y) each, scores; best first."""

    boxes: np.ndarray  # (F, 4)
    landmarks: np.ndarray  # (F, 5, 2)
    scores: np.ndarray  # (F,)


def decode_yunet(
    heads: dict[str, np.ndarray],
    index: int,
    height: int,
    width: int,
    score_threshold: float = SCORE_THRESHOLD,
    nms_threshold: float = NMS_THRESHOLD,
    top_k: int = TOP_K,
) -> Detections:
    """Faces of image `index` of a batch run at (height, width): each cell's score is sqrt(class x objectness)
    (both clipped to [0, 1]), its box centre and landmarks offsets in cells of its stride, its size exp(offset)
    strides; then non-maximum suppression, as OpenCV's FaceDetectorYN."""
    import cv2

    boxes, landmarks, scores = [], [], []
    for stride in STRIDES:
        rows, cols = height // stride, width // stride
        grid_col, grid_row = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
        col, row = grid_col.reshape(-1), grid_row.reshape(-1)
        cls = np.clip(heads[f"cls_{stride}"][index, :, 0], 0, 1)
        obj = np.clip(heads[f"obj_{stride}"][index, :, 0], 0, 1)
        bbox, kps = heads[f"bbox_{stride}"][index], heads[f"kps_{stride}"][index]
        cx, cy = (col + bbox[:, 0]) * stride, (row + bbox[:, 1]) * stride
        w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
        points = kps.reshape(-1, 5, 2)
        landmarks.append(
            np.stack([(col[:, None] + points[..., 0]) * stride, (row[:, None] + points[..., 1]) * stride], -1)
        )
        scores.append(np.sqrt(cls * obj))
    all_boxes, all_landmarks, all_scores = np.concatenate(boxes), np.concatenate(landmarks), np.concatenate(scores)
    kept = cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(), score_threshold, nms_threshold, top_k=top_k)
    order = np.asarray(kept, dtype=np.int64).reshape(-1)
    return Detections(all_boxes[order], all_landmarks[order], all_scores[order])


def padded_size(height: int, width: int, multiple: int = 32) -> tuple[int, int]:
    """The size an image is padded to (bottom and right, with zeros) for YuNet's strides, as OpenCV does."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple
