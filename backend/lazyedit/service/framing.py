"""Binary frame codec of protocol v1 (pure: no I/O, no framework).

A frame is ``N`` (uint32 big-endian) + ``N`` bytes of UTF-8 JSON header + the parts, back to back.
The header is a JSON object carrying ``parts``: ``[{"name", "bytes", "mime"}, ...]`` in the order
the parts follow; their sizes add up exactly to the bytes after the header.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

HEADER_LEN = struct.Struct(">I")
#: Headers are small JSON objects; anything bigger is refused before parsing it.
MAX_HEADER_BYTES = 1 << 20
_MAX_PART_NAME = 64
_MAX_MIME = 128


class FrameError(ValueError):
    """A frame that cannot be decoded; ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str, header: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.header = header  # the parsed header when the error is in the parts


@dataclass(frozen=True)
class Part:
    name: str
    data: bytes
    mime: str = "application/octet-stream"


def encode_frame(header: Mapping[str, Any], parts: Sequence[Part] = ()) -> bytes:
    """Build a binary frame; ``header`` must not carry ``parts`` (it is written from ``parts``)."""
    head = dict(header)
    if "parts" in head:
        raise ValueError("header must not contain 'parts'; pass them separately")
    head["parts"] = [{"name": p.name, "bytes": len(p.data), "mime": p.mime} for p in parts]
    raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"".join([HEADER_LEN.pack(len(raw)), raw, *(p.data for p in parts)])


def decode_frame(frame: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[dict[str, Any], dict[str, Part]]:
    """Split a frame into its header (without ``parts``) and its parts by name.

    Raises FrameError with code ``bad_frame`` (truncated / header length past the frame),
    ``bad_json`` (header not UTF-8 JSON), ``bad_message`` (header not an object) or
    ``bad_parts`` (malformed part list, duplicate names, sizes not adding up).
    """
    view = memoryview(frame)
    if len(view) < HEADER_LEN.size:
        raise FrameError("bad_frame", f"binary frame of {len(view)} bytes is shorter than its 4-byte header length")
    (n,) = HEADER_LEN.unpack_from(view, 0)
    if n > len(view) - HEADER_LEN.size:
        raise FrameError("bad_frame", f"header length {n} runs past the frame ({len(view) - 4} bytes follow)")
    if n > max_header_bytes:
        raise FrameError("bad_frame", f"header of {n} bytes is over the {max_header_bytes}-byte limit")
    try:
        header = json.loads(bytes(view[4 : 4 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError("bad_json", f"frame header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("bad_message", "frame header must be a JSON object")
    try:
        return header, _split_parts(view, 4 + n, header.pop("parts", None))
    except FrameError as exc:
        exc.header = header
        raise


def _split_parts(view: memoryview, offset: int, specs: Any) -> dict[str, Part]:
    if not isinstance(specs, list):
        raise FrameError("bad_parts", "frame header needs 'parts': a list of {name, bytes, mime}")
    parts: dict[str, Part] = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise FrameError("bad_parts", f"part {i} is not an object")
        name, size, mime = spec.get("name"), spec.get("bytes"), spec.get("mime", "application/octet-stream")
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_PART_NAME:
            raise FrameError("bad_parts", f"part {i} needs a 'name' string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FrameError("bad_parts", f"part {name!r} needs 'bytes', a non-negative integer")
        if not isinstance(mime, str) or len(mime) > _MAX_MIME:
            raise FrameError("bad_parts", f"part {name!r} has a bad 'mime'")
        if name in parts:
            raise FrameError("bad_parts", f"part {name!r} appears twice")
        if offset + size > len(view):
            raise FrameError("bad_parts", "parts announce more bytes than the frame holds")
        parts[name] = Part(name, bytes(view[offset : offset + size]), mime)
        offset += size
    if offset != len(view):
        raise FrameError("bad_parts", f"{len(view) - offset} bytes after the last part are not announced in 'parts'")
    return parts
