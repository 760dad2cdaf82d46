"""Bad input: each is answered by an `error` with its code; the connection, session and server go on."""

from __future__ import annotations

import json
import struct
import time
import zlib
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image

from lazyedit.service.framing import Part, encode_frame
from test_service_helpers import WS, box_mask, mask_png, noise_image, png, service

W, H = 64, 48
LIMITS = dict(max_pixels=256 * 256, max_image_bytes=100_000, max_message_bytes=200_000, max_prompt_chars=50)


@lru_cache(maxsize=1)
def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (400 Mpx) that is only ~50 KB: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\x00" * (1 + side // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_pipeline):
    with service(tmp_path_factory.mktemp("bad") / "data", tiny_pipeline, **LIMITS) as c:
        yield c


def frame(header: dict, **parts: bytes) -> bytes:
    return encode_frame(header, [Part(k, v, "image/png") for k, v in parts.items()])


MASK = box_mask(W, H, (8, 8, 24, 24))
GOOD_MASK = mask_png(MASK)


def edit_frame(**fields) -> bytes:
    return frame({"type": "edit", "id": "bad", "prompt": "x", **fields}, mask=GOOD_MASK)


# (name, what to send: ("text", str) | ("bytes", bytes) | callable(ws) -> None, expected code)
CASES = [
    ("malformed_json", ("text", '{"type": "hello",'), "bad_json"),
    ("json_not_object", ("text", "[1, 2]"), "bad_message"),
    ("unknown_type", ("text", json.dumps({"type": "explode", "id": "bad"})), "unknown_type"),
    ("missing_field", ("text", json.dumps({"type": "goto", "id": "bad"})), "bad_message"),
    ("wrong_field_type", ("text", json.dumps({"type": "goto", "id": "bad", "index": "3"})), "bad_message"),
    ("binary_type_as_text", ("text", json.dumps({"type": "edit", "id": "bad", "prompt": "x"})), "bad_message"),
    ("wrong_protocol", ("text", json.dumps({"type": "hello", "id": "bad", "protocol": 2})), "bad_message"),
    ("truncated_binary_header", ("bytes", b"\x00\x00"), "bad_frame"),
    ("header_length_past_frame", ("bytes", b"\x00\x00\x10\x00{\"type\":\"edit\"}"), "bad_frame"),
    ("bad_header_json", ("bytes", b"\x00\x00\x00\x05{nope"), "bad_json"),
    ("wrong_part_sizes", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, mask=GOOD_MASK)[:-5]), "bad_parts"),
    ("missing_mask_part", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, sketch=GOOD_MASK)), "bad_parts"),
    ("unexpected_part", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, mask=GOOD_MASK, extra=b"1")), "bad_parts"),
    ("non_image_mask", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, mask=b"definitely not a png")), "bad_image"),
    ("non_image_canvas", ("bytes", frame({"type": "canvas", "id": "bad"}, image=b"GIF89a nope")), "bad_image"),
    ("truncated_png_canvas", ("bytes", frame({"type": "canvas", "id": "bad"}, image=png(noise_image(32, 32))[:200])), "bad_image"),
    ("mask_wrong_size", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, mask=mask_png(np.ones((H, W + 1), bool)))), "mask_size"),
    ("sketch_wrong_size", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, mask=GOOD_MASK,
                                          sketch=png(Image.new("RGBA", (W, H + 2))))), "sketch_size"),
    ("empty_mask", ("bytes", frame({"type": "edit", "id": "bad", "prompt": "x"}, mask=mask_png(np.zeros((H, W), bool)))), "empty_mask"),
    ("image_too_many_pixels", ("bytes", frame({"type": "canvas", "id": "bad"}, image=png(Image.new("RGB", (300, 300))))), "image_too_large"),
    ("image_too_many_bytes", ("bytes", frame({"type": "canvas", "id": "bad"}, image=png(noise_image(190, 190)))), "image_too_large"),
    ("decompression_bomb", lambda: ("bytes", frame({"type": "canvas", "id": "bad"}, image=bomb_png())), "image_too_large"),
    ("message_too_large", ("bytes", frame({"type": "canvas", "id": "x"}, image=b"\x00" * 250_000)), "message_too_large"),
    ("prompt_too_long", ("bytes", edit_frame(prompt="y" * 51)), "prompt_too_long"),
    ("reserved_prompt", ("bytes", edit_frame(prompt="<null>")), "reserved_prompt"),
    ("steps_out_of_range", ("bytes", edit_frame(steps=100000)), "out_of_range"),
    ("steps_zero", ("bytes", edit_frame(steps=0)), "out_of_range"),
    ("guidance_out_of_range", ("bytes", edit_frame(guidance=-1.0)), "out_of_range"),
    ("negative_seed", ("bytes", edit_frame(seed=-5)), "out_of_range"),
    ("sketch_strength_out_of_range", ("bytes", edit_frame(sketch_strength=9.5)), "out_of_range"),
    ("unknown_session", ("text", json.dumps({"type": "hello", "id": "bad", "protocol": 1, "session": "A" * 22})), "unknown_session"),
    ("traversal_session", ("text", json.dumps({"type": "hello", "id": "bad", "protocol": 1, "session": "../../etc/passwd"})), "unknown_session"),
    ("accept_unknown_target", ("text", json.dumps({"type": "accept", "id": "bad", "target": "never"})), "unknown_target"),
    ("undo_at_start", ("text", json.dumps({"type": "undo", "id": "bad"})), "nothing_to_undo"),
    ("goto_out_of_range", ("text", json.dumps({"type": "goto", "id": "bad", "index": 7})), "out_of_range"),
]


@pytest.mark.parametrize("name,send,code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_answered_and_connection_survives(client, name, send, code):
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ws.hello()
        base = noise_image(W, H)
        ws.canvas(base)
        kind, payload = send() if callable(send) else send
        if kind == "text":
            raw.send_text(payload)
        else:
            raw.send_bytes(payload)
        err, _ = ws.recv()
        assert err["type"] == "error" and err["code"] == code, err
        if code not in ("bad_json", "bad_frame", "message_too_large") and name not in ("json_not_object",):
            assert err["id"] == "bad", err
        # the same connection (and session) still edits normally
        _, result, region = ws.edit_result(MASK, "ok", steps=1)
        assert result["id"] == "ok"


def test_edit_before_canvas_then_resume(client):
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        sid = ws.hello()["session"]
        ws.canvas(noise_image(W, H))
        ws.hello()  # a fresh session on the same socket: no canvas yet
        raw.send_bytes(edit_frame())
        err, _ = ws.recv()
        assert err["code"] == "no_canvas" and err["id"] == "bad"
        ws.send({"type": "undo", "id": "u"})
        assert ws.recv()[0]["code"] == "no_canvas"
        ws.hello(session=sid)
        ws.recv()  # its canvas
        ws.edit_result(MASK, "ok", steps=1)


def test_edit_before_hello(client):
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        raw.send_bytes(edit_frame())
        assert ws.recv()[0]["code"] == "no_canvas"
        ws.hello()
        ws.canvas(noise_image(W, H))
        ws.edit_result(MASK, "ok", steps=1)


def test_too_many_sessions_per_client(tmp_path, tiny_pipeline):
    with service(tmp_path / "d", tiny_pipeline, max_sessions_per_client=2) as c:
        with c.websocket_connect("/ws") as r1, c.websocket_connect("/ws") as r2, c.websocket_connect("/ws") as r3:
            WS(r1).hello()
            WS(r2).hello()
            ws3 = WS(r3)
            ws3.send({"type": "hello", "id": "h3", "protocol": 1})
            assert ws3.recv()[0]["code"] == "too_many_sessions"
        with c.websocket_connect("/ws") as r4:  # freed when the others closed
            ws = WS(r4)
            ws.hello()
            ws.canvas(noise_image(W, H))
            ws.edit_result(MASK, "ok", steps=1)


def test_queue_full(tmp_path, tiny_pipeline):
    with service(tmp_path / "d", tiny_pipeline, max_queue=1, max_batch=1) as c:
        with c.websocket_connect("/ws") as r1, c.websocket_connect("/ws") as r2, c.websocket_connect("/ws") as r3:
            socks = [WS(r) for r in (r1, r2, r3)]
            for ws in socks:
                ws.hello()
                ws.canvas(noise_image(W, H))
            socks[0].edit(MASK, "run", steps=40)     # running
            socks[0].recv_until("progress")
            socks[1].edit(MASK, "wait", steps=1)     # waiting: the queue is now full
            # connections are served concurrently: "full" must not reach the queue before "wait" does
            scheduler = c.app.state.hub.scheduler
            deadline = time.monotonic() + 30
            while scheduler.stats()["queued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            socks[2].edit(MASK, "full", steps=1)
            err, _ = socks[2].recv()
            assert err["code"] == "queue_full" and err["id"] == "full"
            socks[0].send({"type": "cancel", "id": "c", "target": "run"})
            socks[0].recv_until("cancelled")
            socks[1].recv_until("result")
            socks[2].edit_result(MASK, "ok", steps=1)


def test_bad_token_and_foreign_origin_close_but_server_lives(tmp_path, tiny_pipeline):
    with service(tmp_path / "d", tiny_pipeline, token="s3cret") as c:
        with c.websocket_connect("/ws?token=wrong") as raw:
            h, _ = WS(raw).recv()
            assert h["code"] == "unauthorized"
            assert WS(raw).recv()[0] == {"type": "__closed__", "code": 4401}
        with c.websocket_connect("/ws") as raw:
            assert WS(raw).recv()[0]["code"] == "unauthorized"
        assert c.get("/api/sessions").status_code == 401
        assert c.get("/api/sessions", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/sessions", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with c.websocket_connect("/ws?token=s3cret") as raw:
            ws = WS(raw)
            ws.hello()
            ws.canvas(noise_image(W, H))
            ws.edit_result(MASK, "ok", steps=1)
    with service(tmp_path / "d2", tiny_pipeline, allowed_origins=["http://localhost:5173"]) as c:
        # foreign origins, and a same-host origin that is not loopback (a DNS re-binding page) without a token
        for origin, host in (("https://evil.example", "127.0.0.1:7860"), ("http://evil.example:7860", "127.0.0.1:7860"),
                             ("null", "127.0.0.1:7860"), ("http://evil.example:7860", "evil.example:7860")):
            with c.websocket_connect("/ws", headers={"Origin": origin, "Host": host}) as raw:
                assert WS(raw).recv()[0]["code"] == "bad_origin"
                assert WS(raw).recv()[0] == {"type": "__closed__", "code": 4403}
        assert c.get("/api/health", headers={"Host": "evil.example:7860"}).status_code == 400
        for origin, host in (("http://localhost:5173", "127.0.0.1:7860"), ("http://127.0.0.1:7860", "127.0.0.1:7860"),
                             ("http://localhost:7860", "localhost:7860")):
            with c.websocket_connect("/ws", headers={"Origin": origin, "Host": host}) as raw:
                ws = WS(raw)
                ws.hello()
                ws.canvas(noise_image(W, H))
                ws.edit_result(MASK, "ok", steps=1)


@pytest.mark.parametrize("flags, names", [
    (["--image-store", "s3://"], "s3://<bucket>"),
    (["--database-url", "nosuch://x"], "database 'nosuch://x'"),
    (["--database-url", "postgresql://u:secret@127.0.0.1:9/db"], "postgresql://u:***@127.0.0.1:9/db"),
])
def test_serve_names_a_bad_store_in_one_line_and_exits_2(tmp_path, capsys, flags, names):
    from lazyedit.service.cli import serve_main

    assert serve_main(["--model", "tiny", "--data-dir", str(tmp_path / "data"), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lazyedit serve: ") and names in err and "secret" not in err
    assert "Traceback" not in err
