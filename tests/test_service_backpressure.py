"""A client that asks for much and reads nothing is disconnected; the server's memory does not grow with it."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lazyedit.service.framing import Part, encode_frame
from test_service_crash import free_port, recv, start
from test_service_helpers import decode_png, noise_image, png


def test_client_that_does_not_read_is_closed_and_can_resume(tmp_path):
    port = free_port()
    proc = start(tmp_path / "data", port, max_outgoing_bytes=1024 * 1024)
    try:
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            ws.send(json.dumps({"type": "hello", "id": "h", "protocol": 1}))
            sid = recv(ws)[0]["session"]
            image = noise_image(512, 512, seed=1)
            canvas = png(image)     # ~0.8 MB: every `goto` answers with all of it
            ws.send(encode_frame({"type": "canvas", "id": "c"}, [Part("image", canvas, "image/png")]))
            assert recv(ws)[0]["of"] == "canvas"
            asked = 200                                      # 160 MB of answers, far beyond socket buffers
            for i in range(asked):
                ws.send(json.dumps({"type": "goto", "id": f"g{i}", "index": 0}))
            time.sleep(5)   # read nothing while the server answers: its queue for this socket outgrows the cap
            answers = 0
            try:
                while True:
                    h, _ = recv(ws)
                    answers += h["type"] == "canvas"
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
            # 4408 when the close frame gets through; when the client read nothing for long, the server's close
            # handshake times out and it drops the connection without one
            assert code in (4408, None), code
            assert answers < asked
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as r:
            assert json.load(r)["status"] == "ok"
        # the session is intact: resume it on a new socket
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            ws.send(json.dumps({"type": "hello", "id": "h", "protocol": 1, "session": sid}))
            ready, _ = recv(ws)
            assert ready["type"] == "ready" and ready["session"] == sid and ready["canvas"]["width"] == 512
            h, parts = recv(ws)
            assert h["type"] == "canvas"
            assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), np.asarray(image))
    finally:
        proc.kill()
        proc.wait()
