"""Decoding untrusted images (canvas, mask, sketch): byte and pixel caps checked before any pixel is
decoded, so decompression bombs are refused. Shared by the service and the command line."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .engine.pipeline import EditInputError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EditInputError("bad_image", f"cannot read {what} {path}: {e.strerror}") from None


def _open(data: bytes, *, what: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Open lazily (header only), check size, then decode."""
    if len(data) > max_bytes:
        raise EditInputError("image_too_large", f"{what}: {len(data)} bytes, limit {max_bytes}")
    if not data:
        raise EditInputError("bad_image", f"{what}: empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise EditInputError("image_too_large", f"{what}: decompression bomb refused") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise EditInputError("bad_image", f"{what}: not a PNG/JPEG/WebP image ({type(exc).__name__})") from None
    return im


def _check_pixels(im: Image.Image, *, what: str, max_pixels: int) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise EditInputError("bad_image", f"{what}: empty image {w}x{h}")
    if w * h > max_pixels:
        raise EditInputError("image_too_large", f"{what}: {w}x{h} = {w * h} pixels, limit {max_pixels}")


def _load(im: Image.Image, *, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise EditInputError("image_too_large", f"{what}: decompression bomb refused") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise EditInputError("bad_image", f"{what}: cannot decode ({type(exc).__name__}: {exc})") from None
    return im


def decode_canvas(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Canvas upload -> RGB image. Codes: image_too_large, bad_image."""
    im = _open(data, what="image", max_bytes=max_bytes, max_pixels=max_pixels)
    _check_pixels(im, what="image", max_pixels=max_pixels)
    im = _load(im, what="image")
    if im.mode != "RGB":
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            im = bg
        else:
            im = im.convert("RGB")
    return im


def decode_canvas_png(data: bytes, *, max_bytes: int, max_pixels: int) -> tuple[Image.Image, bytes]:
    """Canvas upload -> (RGB image, the PNG that is stored for it)."""
    im = decode_canvas(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return im, encode_png(im)


def _sized(data: bytes, *, what: str, size: tuple[int, int], code: str, max_bytes: int) -> Image.Image:
    # pixel cap = the canvas size itself: a mask/sketch of any other size is refused from its header
    im = _open(data, what=what, max_bytes=max_bytes, max_pixels=size[0] * size[1])
    if im.size != tuple(size):
        raise EditInputError(code, f"{what} is {im.size[0]}x{im.size[1]}, canvas is {size[0]}x{size[1]}")
    return _load(im, what=what)


def decode_mask(data: bytes, *, size: tuple[int, int], max_bytes: int) -> np.ndarray:
    """Mask PNG -> bool (H, W): alpha > 127 when the image has alpha, else grey > 127.
    Codes: bad_image, image_too_large, mask_size, empty_mask."""
    im = _sized(data, what="mask", size=size, code="mask_size", max_bytes=max_bytes)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        chan = im.convert("RGBA").getchannel("A")
    else:
        chan = im.convert("L")
    mask = np.asarray(chan) > 127
    if not mask.any():
        raise EditInputError("empty_mask", "the mask selects no pixel")
    return mask


def decode_sketch(data: bytes, *, size: tuple[int, int], max_bytes: int) -> Image.Image:
    """Sketch PNG -> RGBA of the canvas size. Codes: bad_image, image_too_large, sketch_size."""
    im = _sized(data, what="sketch", size=size, code="sketch_size", max_bytes=max_bytes)
    return im.convert("RGBA")


def encode_png(im: Image.Image, *, compress_level: int = 3) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(im: Image.Image, *, quality: int = 70) -> bytes:
    buf = io.BytesIO()
    if im.mode != "RGB":
        im = im.convert("RGB")
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def expand_canvas(image: Image.Image, left: int, top: int, right: int, bottom: int) -> Image.Image:
    """The image grown by these many pixels on each side, the new border repeating the nearest edge pixel (a
    neutral start for an edit that paints it: no hard frame the model would have to hide)."""
    rgb = np.asarray(image.convert("RGB"))
    return Image.fromarray(np.pad(rgb, ((top, bottom), (left, right), (0, 0)), mode="edge"))
