"""Decode image bytes to 8-bit RGB: EXIF orientation, colour modes, and a pixel limit checked before decoding."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cluster.pipeline.errors import ImageError, Reason

SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"}
# Smaller than MTCNN's 12 px proposal window no face can be found.
MIN_SIDE = 12


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow clips 16-bit values when converting to "L"; scale them down instead.
        wide = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode.startswith("I;16") or wide.max() > 255 else 255
        grey = (wide * 255 // peak).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        # Floating point (scientific TIFFs): 0-1 is the usual range; anything else is scaled by its peak.
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(values.max(initial=0.0))
        scale = 255.0 if top <= 1.0 else 255.0 / top
        grey = np.clip(values * scale, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        # Transparent areas become white, as a viewer shows them on a light page.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 RGB, upright; raises ImageError with a reason code."""
    if not data:
        raise ImageError(Reason.EMPTY_OBJECT, "the object is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError(Reason.UNSUPPORTED_FORMAT, "not an image in a known format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(Reason.IMAGE_TOO_LARGE, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # A header cut short, or metadata (PNG text, an ICC profile) that inflates past Pillow's own bound.
        raise ImageError(Reason.CORRUPT_IMAGE, f"cannot read the image's header: {exc}") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise ImageError(Reason.UNSUPPORTED_FORMAT, f"{image.format} images are not supported")
    width, height = image.size
    # Checked from the header alone, so a decompression bomb never allocates its pixels.
    if width * height > max_pixels:
        raise ImageError(Reason.IMAGE_TOO_LARGE, f"{width}x{height} exceeds the limit of {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageError(Reason.IMAGE_TOO_SMALL, f"{width}x{height} is smaller than {MIN_SIDE} px on a side")
    try:
        image.load()
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(Reason.CORRUPT_IMAGE, f"cannot decode {image.format}: {exc}") from exc
    return np.ascontiguousarray(rgb)


class DecodeImages:
    """Batch stage: bytes in, arrays or ImageErrors out (never raises for bad input)."""

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels

    def __call__(self, blobs: list[bytes]) -> list[np.ndarray | ImageError]:
        out: list[np.ndarray | ImageError] = []
        for blob in blobs:
            try:
                out.append(decode_image(blob, self.max_pixels))
            except ImageError as exc:
                out.append(exc)
        return out
