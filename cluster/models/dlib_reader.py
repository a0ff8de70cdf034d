"""Reader for dlib's binary serialisation of the face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# Layer detail records start with a dlib string (length as a packed int, then the bytes) naming the layer type.
_LAYER_NAME = re.compile(rb"\x01[\x04-\x20](con_4|affine_|relu_|max_pool_2|avg_pool_2|add_prev_|fc_2)")


class DlibFormatError(ValueError):
    """The file is not the dlib network this reader knows."""


@dataclass
class DlibLayer:
    kind: str
    params: np.ndarray | None = None
    ints: list[int] = field(default_factory=list)


class _Cursor:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def int_(self) -> int:
        # dlib packs integers as one control byte (low nibble: byte count, 0x80: negative) then little-endian bytes.
        control = self.data[self.pos]
        size = control & 0x0F
        raw = self.data[self.pos + 1 : self.pos + 1 + size]
        self.pos += 1 + size
        value = int.from_bytes(raw, "little")
        return -value if control & 0x80 else value

    def tensor(self) -> np.ndarray:
        version = self.int_()
        if version != 2:
            raise DlibFormatError(f"tensor serialisation version {version}, expected 2")
        shape = tuple(self.int_() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return values.reshape(shape).astype(np.float32)


def read_dlib_layers(data: bytes) -> list[DlibLayer]:
    """Return the network's layers in forward order (input side first), with their parameters."""
    layers: list[DlibLayer] = []
    pos = 0
    while True:
        match = _LAYER_NAME.search(data, pos)
        if match is None:
            break
        kind = match.group(1).decode()
        cursor = _Cursor(data, match.end())
        layer = DlibLayer(kind)
        if kind == "fc_2":
            layer.ints = [cursor.int_() for _ in range(2)]  # num_outputs, num_inputs
        if kind in ("con_4", "affine_", "fc_2"):
            layer.params = cursor.tensor().reshape(-1)
        if kind == "con_4":
            # num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x
            layer.ints = [cursor.int_() for _ in range(7)]
        elif kind in ("max_pool_2", "avg_pool_2"):
            # nr, nc, stride_y, stride_x, padding_y, padding_x
            layer.ints = [cursor.int_() for _ in range(6)]
        layers.append(layer)
        pos = cursor.pos
    if not layers:
        raise DlibFormatError("no dlib layers found")
    return layers
