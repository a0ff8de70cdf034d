"""A generated corpus of bad and awkward input: each gives its reason code or the right faces, never a crash."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cluster.pipeline.decode import DecodeImages, decode_image
from cluster.pipeline.errors import ImageError, Reason
from tests.conftest import lfw_photos
from tests.factories import png_header_only

LIMIT = 40_000_000


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def face_jpeg(lfw_images: Path) -> bytes:
    return lfw_photos(lfw_images, people=1)[0].read_bytes()


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", Reason.EMPTY_OBJECT),
        (b"name,age\nada,36\n", Reason.UNSUPPORTED_FORMAT),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), Reason.IMAGE_TOO_SMALL),
        (png_header_only(30_000, 30_000), Reason.IMAGE_TOO_LARGE),
        (_encode(Image.new("RGB", (64, 64)), "GIF"), Reason.UNSUPPORTED_FORMAT),
    ],
    ids=["zero-bytes", "text-file", "1x1", "png-30000x30000", "gif"],
)
def test_bad_input_has_reason(blob: bytes, reason: Reason) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(blob, LIMIT)
    assert caught.value.reason == reason


def test_truncated_jpeg_is_corrupt(face_jpeg: bytes) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(face_jpeg[: len(face_jpeg) // 2], LIMIT)
    assert caught.value.reason == Reason.CORRUPT_IMAGE


def test_cut_headers_and_inflating_metadata_are_corrupt(face_jpeg: bytes) -> None:
    face = Image.open(io.BytesIO(face_jpeg))
    text, icc = PngImagePlugin.PngInfo(), b"x" * 3_000_000
    text.add_text("comment", "x" * 5_000_000, zip=True)
    for blob in (face_jpeg[:200], _encode(face, "PNG", pnginfo=text), _encode(face, "PNG", icc_profile=icc)):
        with pytest.raises(ImageError) as caught:
            decode_image(blob, LIMIT)
        assert caught.value.reason == Reason.CORRUPT_IMAGE


def test_batch_stage_never_raises(face_jpeg: bytes) -> None:
    out = DecodeImages(LIMIT)([b"", face_jpeg, b"junk"])
    assert isinstance(out[0], ImageError) and isinstance(out[2], ImageError)
    assert isinstance(out[1], np.ndarray) and out[1].dtype == np.uint8 and out[1].shape[2] == 3


def test_colour_modes_become_8bit_rgb(face_jpeg: bytes, pipeline) -> None:  # type: ignore[no-untyped-def]
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    wide = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    palette = face.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    variants = {
        "cmyk-jpeg": _encode(face.convert("CMYK"), "JPEG", quality=95),
        "16-bit-png": _encode(Image.fromarray(wide), "PNG"),
        "palette-png-transparency": _encode(palette, "PNG", transparency=0),
        "webp": _encode(face, "WEBP", quality=95),
        "bmp": _encode(face, "BMP"),
        "tiff": _encode(face, "TIFF"),
        "float-tiff": _encode(Image.fromarray(np.asarray(face.convert("L"), dtype=np.float32) / 255, "F"), "TIFF"),
    }
    for name, blob in variants.items():
        image = decode_image(blob, LIMIT)
        assert image.dtype == np.uint8 and image.shape == (face.height, face.width, 3), name
        # Real content, not a black or clipped frame.
        assert 40 < image.mean() < 220, name
    results = pipeline(list(variants.values()))
    for name, result in zip(variants, results, strict=True):
        assert not isinstance(result, ImageError), name
        assert len(result.faces) >= 1, name


def test_exif_rotation_is_applied_before_detection(face_jpeg: bytes, pipeline) -> None:  # type: ignore[no-untyped-def]
    upright = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    # Stored sideways, with EXIF orientation 6 ("rotate 90 CW to display"), as phone cameras write them.
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = _encode(sideways, "JPEG", quality=95, exif=exif)
    untagged = _encode(sideways, "JPEG", quality=95)
    found_tagged, found_untagged = pipeline([tagged, untagged])
    assert not isinstance(found_tagged, ImageError) and not isinstance(found_untagged, ImageError)
    assert (found_tagged.width, found_tagged.height) == upright.size
    assert len(found_tagged.faces) >= 1
    assert len(found_untagged.faces) == 0


def test_detection_alone_makes_no_vectors(face_jpeg: bytes, pipeline) -> None:  # type: ignore[no-untyped-def]
    detected, embedded = pipeline([face_jpeg], embed=False)[0], pipeline([face_jpeg])[0]
    assert detected.faces and all(face.embedding is None for face in detected.faces)
    assert [face.bbox.tolist() for face in detected.faces] == [face.bbox.tolist() for face in embedded.faces]
    assert all(face.embedding is not None for face in embedded.faces)
