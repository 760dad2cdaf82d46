"""WebSocket round-trips against the real app (TestClient), tiny model on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_service_helpers import WS, box_mask, mask_png, noise_image, paste, prepared_count, service


@pytest.fixture
def client(tmp_path, tiny_pipeline):
    with service(tmp_path / "data", tiny_pipeline) as c:
        yield c


def test_edit_round_trip_keeps_pixels_outside_mask(client):
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ready = ws.hello()
        assert ready["protocol"] == 1 and ready["canvas"] is None and len(ready["session"]) == 22
        im = noise_image(96, 64)
        ack = ws.canvas(im)
        assert (ack["width"], ack["height"], ack["position"]) == (96, 64, 0)
        mask = box_mask(96, 64, (30, 20, 60, 44))
        seen, result, region = ws.edit_result(mask, "e1", steps=2, seed=7)
        types = [h["type"] for h in seen]
        assert "progress" in types and types.index("progress") < types.index("result")
        prog = next(h for h in seen if h["type"] == "progress")
        assert prog["id"] == "e1" and prog["total"] == 2 and prog["step"] >= 1
        assert result["seed"] == 7 and result["steps"] == 2 and "queue_ms" in result["timings"]
        box = result["box"]
        assert region.size == (box[2] - box[0], box[3] - box[1])
        edited = np.asarray(paste(im, region.convert("RGB"), box))
        orig = np.asarray(im)
        assert np.array_equal(edited[~mask], orig[~mask])
        # accept -> durable, history grows
        ws.send({"type": "accept", "id": "a1", "target": "e1"})
        ack, _ = ws.recv()
        assert ack["type"] == "ack" and ack["of"] == "accept" and ack["position"] == 1
        assert [h["index"] for h in ack["history"]] == [0, 1] and ack["history"][1]["seed"] == 7
        # undo / redo / goto answer with canvas frames
        ws.send({"type": "undo", "id": "u"})
        h, parts = ws.recv()
        assert h["type"] == "canvas" and h["position"] == 0
        from test_service_helpers import decode_png
        assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), orig)
        ws.send({"type": "redo", "id": "r"})
        h, parts = ws.recv()
        assert h["type"] == "canvas" and h["position"] == 1
        assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), edited)
        ws.send({"type": "redo", "id": "r2"})
        h, _ = ws.recv()
        assert h["type"] == "error" and h["code"] == "nothing_to_undo" and h["id"] == "r2"
        ws.send({"type": "goto", "id": "g", "index": 0})
        h, _ = ws.recv()
        assert h["type"] == "canvas" and h["position"] == 0


def test_expand_grows_the_canvas_as_a_history_entry_that_undo_takes_back(client):
    from test_service_helpers import decode_png

    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ws.hello()
        im = noise_image(40, 30)
        orig = np.asarray(im)
        ws.canvas(im)
        ws.send({"type": "expand", "id": "x1", "left": 8, "right": 16, "bottom": 10})
        h, parts = ws.recv()
        assert h["type"] == "canvas" and h["id"] == "x1" and (h["width"], h["height"], h["position"]) == (64, 40, 1)
        assert h["history"][1]["prompt"] == "expanded to 64x40"
        big = np.asarray(decode_png(parts["image"]).convert("RGB"))
        assert np.array_equal(big[:30, 8:48], orig)  # the image, untouched, at its offset
        assert np.array_equal(big[:30, 48:], np.repeat(orig[:, -1:], 16, axis=1))  # the border repeats the edge
        assert np.array_equal(big[:30, :8], np.repeat(orig[:, :1], 8, axis=1))
        assert np.array_equal(big[30:], np.repeat(big[29:30], 10, axis=0))
        # a mask of the old size no longer fits; the new border is edited like any mask
        ws.edit(box_mask(40, 30, (0, 0, 10, 10)), "old")
        h, _ = ws.recv_until("error")
        assert h[-1]["code"] == "mask_size" and h[-1]["id"] == "old"
        border = box_mask(64, 40, (48, 0, 64, 40))
        _, result, region = ws.edit_result(border, "e1", steps=2, seed=1)
        edited = np.asarray(paste(Image.fromarray(big), region.convert("RGB"), result["box"]))
        assert np.array_equal(edited[~border], big[~border]) and not np.array_equal(edited[border], big[border])
        ws.send({"type": "accept", "id": "a1", "target": "e1"})
        ack, _ = ws.recv()
        assert ack["type"] == "ack" and (ack["width"], ack["height"], ack["position"]) == (64, 40, 2)
        # undo twice: back through the accepted edit to the original size
        for position, size in ((1, (64, 40)), (0, (40, 30))):
            ws.send({"type": "undo", "id": f"u{position}"})
            h, parts = ws.recv()
            assert h["type"] == "canvas" and h["position"] == position and (h["width"], h["height"]) == size
        assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), orig)
        ws.edit(box_mask(40, 30, (0, 0, 10, 10)), "small", steps=1)  # the old size fits again
        h, _ = ws.recv_until("result")
        assert h[-1]["id"] == "small"
        # bad expands are named, and the socket goes on
        for rid, fields, code in (("x2", {}, "bad_message"), ("x3", {"right": -1}, "bad_message"),
                                  ("x4", {"right": "5"}, "bad_message"), ("x5", {"top": 5000}, "bad_message"),
                                  ("x6", {"right": 4096, "bottom": 4096}, "image_too_large")):
            ws.send({"type": "expand", "id": rid, **fields})
            h, _ = ws.recv()
            assert (h["type"], h["id"], h["code"]) == ("error", rid, code), h
        ws.send({"type": "redo", "id": "r"})
        h, _ = ws.recv()
        assert h["type"] == "canvas" and (h["width"], h["height"]) == (64, 40)


def test_canvas_and_mask_are_encoded_before_the_edit_asks(client):
    client.app.state.hub.pipe.clear_caches()
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ws.hello()
        im = noise_image(96, 64, seed=11)
        ws.canvas(im)  # queues the canvas latent
        assert prepared_count(client, 1) == 1
        mask = box_mask(96, 64, (20, 10, 50, 40))
        ws.send_frame({"type": "prepare", "id": "p1"}, {"mask": (mask_png(mask), "image/png")})
        seen, _ = ws.recv_until("prepared", "error")
        assert seen[-1]["type"] == "prepared" and seen[-1]["id"] == "p1", seen[-1]
        assert seen[-1]["timings"]["vae_encode_ms"] == 0 and seen[-1]["timings"]["context_ms"] > 0
        _, result, region = ws.edit_result(mask, "e1", steps=2, seed=3)
        assert result["timings"]["vae_encode_ms"] == 0 and result["timings"]["context_ms"] == 0
        assert result["timings"]["known_pixels_ms"] == 0  # the decoder's features of the pixels around the mask too
        edited = np.asarray(paste(im, region.convert("RGB"), result["box"]))
        assert np.array_equal(edited[~mask], np.asarray(im)[~mask])
        # a bad prepare is answered by name and costs nothing: the session edits on
        for rid, parts, code in (
            ("p2", {"mask": (mask_png(box_mask(40, 40, (1, 1, 9, 9))), "image/png")}, "mask_size"),
            ("p3", {"mask": (mask_png(np.zeros((64, 96), bool)), "image/png")}, "empty_mask"),
            ("p4", {}, "bad_parts"),
            ("p5", {"mask": (b"not a png", "image/png")}, "bad_image"),
        ):
            ws.send_frame({"type": "prepare", "id": rid}, parts)
            h, _ = ws.recv()
            assert (h["type"], h["id"], h["code"]) == ("error", rid, code), h
        ws.send({"type": "accept", "id": "a1", "target": "e1"})  # the accepted canvas is encoded next
        assert ws.recv()[0]["of"] == "accept"
        assert prepared_count(client, 3) == 3
        _, result, _ = ws.edit_result(box_mask(96, 64, (60, 30, 90, 60)), "e2", steps=2, seed=3)
        assert result["timings"]["vae_encode_ms"] == 0 and result["timings"]["context_ms"] > 0


def test_prepare_needs_a_canvas(client):
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ws.hello()
        ws.send_frame({"type": "prepare", "id": "p0"}, {"mask": (mask_png(box_mask(8, 8, (1, 1, 4, 4))), "image/png")})
        h, _ = ws.recv()
        assert (h["type"], h["id"], h["code"]) == ("error", "p0", "no_canvas")


def test_supersede_and_cancel(client):
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ws.hello()
        ws.canvas(noise_image(96, 64))
        mask = box_mask(96, 64, (10, 10, 50, 50))
        # a long edit, superseded by a new one: the first is cancelled, the second completes
        ws.edit(mask, "slow", steps=100)
        ws.edit(mask, "fast", steps=2)
        seen, _ = ws.recv_until("result")
        ends = [(h["type"], h.get("id")) for h in seen if h["type"] in ("cancelled", "result", "error")]
        assert ends == [("cancelled", "slow"), ("result", "fast")]
        # cancel names one edit: a wrong target does nothing, the right one cancels
        ws.edit(mask, "c1", steps=100)
        ws.send({"type": "cancel", "id": "x", "target": "nope"})
        ws.send({"type": "cancel", "id": "x2", "target": "c1"})
        seen, _ = ws.recv_until("cancelled", "result")
        assert seen[-1] == {"type": "cancelled", "id": "c1"}
        # and the connection goes on working
        ws.edit_result(mask, "after", steps=1)


def test_resume_after_reconnect(client):
    mask = box_mask(96, 64, (20, 20, 40, 40))
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        sid = ws.hello()["session"]
        ws.canvas(noise_image(96, 64))
        ws.edit_result(mask, "e1", steps=1, seed=1)
        ws.send({"type": "accept", "id": "a", "target": "e1"})
        assert ws.recv()[0]["of"] == "accept"
        ws.edit_result(mask, "e2", steps=1, seed=2)
    # reload: same session, history and current image come back; the un-accepted result can still be accepted
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ready = ws.hello(session=sid)
        assert ready["session"] == sid and ready["position"] == 1 and len(ready["history"]) == 2
        assert ready["canvas"]["width"] == 96
        h, parts = ws.recv()
        assert h["type"] == "canvas" and "image" in parts and h["position"] == 1
        ws.send({"type": "accept", "id": "a2", "target": "e2"})
        ack, _ = ws.recv()
        assert ack["type"] == "ack" and ack["position"] == 2
        # an edit running while the socket drops is delivered to the resumed socket. Wait for its first
        # preview: the test client cancels the server's task on close, which can stop an edit message that is
        # still being read (before it is queued); such an edit was never started, and the editor times it out.
        ws.edit(mask, "e3", steps=30)
        ws.recv_until("progress")
    with client.websocket_connect("/ws") as raw:
        ws = WS(raw)
        ws.hello(session=sid)
        seen, _ = ws.recv_until("result", "cancelled")
        assert seen[-1]["id"] == "e3" and seen[-1]["type"] == "result"


def test_takeover_closes_older_socket(client):
    with client.websocket_connect("/ws") as raw1:
        ws1 = WS(raw1)
        sid = ws1.hello()["session"]
        ws1.canvas(noise_image(32, 32))
        with client.websocket_connect("/ws") as raw2:
            ws2 = WS(raw2)
            ws2.hello(session=sid)
            ws2.recv()  # canvas
            h, _ = ws1.recv()
            assert h["type"] == "__closed__" and h["code"] == 4409


def test_state_change_finishes_when_its_socket_task_is_cancelled():
    """A storage write and the in-memory state it installs happen together, even if the socket drops between."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from lazyedit.service.connection import run_to_end

    events: list[str] = []

    async def commit():
        await asyncio.sleep(0.05)   # the storage write, in a thread in the real handlers
        events.append("installed")

    async def handler():
        await run_to_end(commit())
        events.append("acknowledged")

    async def main():
        task = asyncio.create_task(handler())
        await asyncio.sleep(0.01)
        task.cancel()               # what a dropped socket does to its handler
        try:
            await task
        except asyncio.CancelledError:
            events.append("cancelled")
        await asyncio.sleep(0.1)

    with ThreadPoolExecutor(1) as pool:    # a thread of its own: the browser tests leave a loop in this one
        pool.submit(asyncio.run, main()).result()
    assert events == ["cancelled", "installed"]
