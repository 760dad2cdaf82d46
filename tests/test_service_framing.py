"""The binary frame codec, and the protocol document's examples against it and the schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lazyedit.service import protocol as P
from lazyedit.service.framing import FrameError, Part, decode_frame, encode_frame

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def test_doc_example_frame_matches_codec():
    text = DOC.read_text()
    example = text[text.index("Example: a header"):]
    header = re.search(r"`(\{\"type\":\"canvas\".*?\})`", example).group(1)
    n_header = int(re.search(r"\((\d+) bytes\)", example).group(1))
    prefix = re.search(r"`((?:[0-9a-f]{2} ){3}[0-9a-f]{2})` \+ header bytes", example).group(1)
    total = int(re.search(r"\((\d+) bytes in all\)", example).group(1))
    frame = encode_frame({"type": "canvas", "id": "c1"}, [Part("image", b"\x01\x02\x03", "image/png")])
    assert len(header.encode()) == n_header
    assert frame == bytes.fromhex(prefix.replace(" ", "")) + header.encode() + b"\x01\x02\x03"
    assert len(frame) == total == 90
    head, parts = decode_frame(frame)
    assert head == {"type": "canvas", "id": "c1"} and parts["image"].data == b"\x01\x02\x03"
    assert isinstance(P.client_message_adapter.validate_python(head), P.CanvasIn)


def test_round_trip_several_parts_and_unicode():
    parts = [Part("mask", b"\x00" * 10, "image/png"), Part("sketch", b"xyz", "image/png"), Part("empty", b"")]
    frame = encode_frame({"type": "edit", "id": "é", "prompt": "ein Stern ★"}, parts)
    head, got = decode_frame(frame)
    assert head["prompt"] == "ein Stern ★" and [p.data for p in got.values()] == [p.data for p in parts]


@pytest.mark.parametrize("frame,code", [
    (b"", "bad_frame"),
    (b"\x00\x00\x01", "bad_frame"),
    (b"\x00\x00\x00\xff{}", "bad_frame"),
    (b"\x00\x00\x00\x02{x", "bad_json"),
    (b"\x00\x00\x00\x02\xff\xfe", "bad_json"),
    (b"\x00\x00\x00\x02[]", "bad_message"),
    (b"\x00\x00\x00\x02{}", "bad_parts"),
    (encode_frame({"type": "canvas"}, [Part("image", b"abc")]) + b"extra", "bad_parts"),
    (encode_frame({"type": "canvas"}, [Part("image", b"abc")])[:-1], "bad_parts"),
])
def test_decode_errors(frame, code):
    with pytest.raises(FrameError) as info:
        decode_frame(frame)
    assert info.value.code == code


def test_duplicate_and_malformed_parts():
    raw = json.dumps({"type": "x", "parts": [{"name": "a", "bytes": 1, "mime": "m"}, {"name": "a", "bytes": 1, "mime": "m"}]}).encode()
    with pytest.raises(FrameError, match="twice"):
        decode_frame(len(raw).to_bytes(4, "big") + raw + b"12")
    raw = json.dumps({"type": "x", "parts": [{"name": "a", "bytes": -1}]}).encode()
    with pytest.raises(FrameError):
        decode_frame(len(raw).to_bytes(4, "big") + raw)


def test_server_messages_validate_against_schemas():
    lim = P.Limits(max_pixels=1, max_image_bytes=1, max_message_bytes=1, max_prompt_chars=1, min_steps=1,
                   max_steps=2, min_guidance=0, max_guidance=1)
    msgs = [P.Ready(session="s", model="tiny", device="cpu", limits=lim, canvas=None, history=[], position=0,
                    default_steps=4, default_guidance=2.0),
            P.Ack(of="canvas", version=1, width=2, height=2, position=0, history=[]),
            P.Cancelled(id="e"), P.Error(code="bad_json", message="m"),
            P.Progress(id="e", step=1, total=2, box=(0, 0, 1, 1)),
            P.Result(id="e", seed=1, box=(0, 0, 1, 1), timings={"total_ms": 1.0}, steps=2)]
    for m in msgs:
        assert type(P.server_message_adapter.validate_json(m.model_dump_json())) is type(m)
    # every error code the document lists is a code of the schema, and the other way round
    doc_codes = set(re.findall(r"`([a-z_]+)`", DOC.read_text().split("## Error codes")[1].split("##")[0]))
    assert doc_codes == set(P.ERROR_CODES)
