"""Decoding untrusted image bytes: size checks before pixels are decoded (decompression bombs)."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from .pipeline import EditInputError


def decode_image(data: bytes, max_pixels: int = 4096 * 4096, max_bytes: int = 64 << 20, what: str = "image") -> Image.Image:
    """PNG/JPEG/WebP... bytes -> a loaded PIL image. Raises EditInputError with code bad_image or
    image_too_large; the pixel count is read from the header, before any pixel is decoded."""
    if len(data) > max_bytes:
        raise EditInputError("image_too_large", f"{what} is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise EditInputError("image_too_large", f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            img.load()
    except EditInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise EditInputError("image_too_large", f"{what} refused as a decompression bomb: {e}") from None
    except Exception as e:
        raise EditInputError("bad_image", f"{what} is not a readable image ({type(e).__name__}: {e})") from None
    return img


def read_image_file(path: str, max_pixels: int = 4096 * 4096, what: str = "image") -> Image.Image:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise EditInputError("bad_image", f"cannot read {what} {path}: {e.strerror}") from None
    return decode_image(data, max_pixels=max_pixels, max_bytes=1 << 40, what=f"{what} {path}")
