"""A real `python -m lazyedit.service` killed with SIGKILL mid-edit loses nothing that was accepted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
from websockets.sync.client import connect

from lazyedit.service.framing import Part, decode_frame, encode_frame
from test_service_helpers import box_mask, decode_png, mask_png, noise_image, paste, png


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir, port, **settings) -> subprocess.Popen:
    """A real server process; ``settings`` go in as LAZYEDIT_* environment variables."""
    env = {**os.environ, **{f"LAZYEDIT_{k.upper()}": str(v) for k, v in settings.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "lazyedit.service", "--model", "tiny", "--device", "cpu",
                             "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as r:
                if json.load(r)["status"] == "ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


@contextmanager
def server(data_dir, port, **settings):
    """A running server for the block: stopped with SIGTERM at its end unless the test killed it."""
    proc = start(data_dir, port, **settings)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def recv(ws):
    msg = ws.recv(timeout=60)
    if isinstance(msg, bytes):
        h, parts = decode_frame(msg)
        return h, {k: p.data for k, p in parts.items()}
    return json.loads(msg), {}


def recv_until(ws, *types):
    while True:
        h, parts = recv(ws)
        if h["type"] in types:
            return h, parts


def open_canvas(ws, im) -> str:
    """hello + canvas on a fresh socket; returns the new session's id."""
    ws.send(json.dumps({"type": "hello", "id": "h", "protocol": 1}))
    sid = recv(ws)[0]["session"]
    ws.send(encode_frame({"type": "canvas", "id": "c"}, [Part("image", png(im), "image/png")]))
    assert recv(ws)[0]["type"] == "ack"
    return sid


def sigkill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
        return r.read()


def test_sigkill_mid_edit_keeps_accepted_edits(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    im = noise_image(64, 64, seed=5)
    current = im
    with server(data, port) as proc:
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            sid = open_canvas(ws, im)
            for i, box in enumerate([(8, 8, 24, 24), (30, 30, 60, 50)]):
                mask = box_mask(64, 64, box)
                ws.send(encode_frame({"type": "edit", "id": f"e{i}", "prompt": "p", "steps": 1, "seed": i},
                                     [Part("mask", mask_png(mask), "image/png")]))
                h, parts = recv_until(ws, "result")
                current = paste(current, decode_png(parts["image"]).convert("RGB"), h["box"])
                ws.send(json.dumps({"type": "accept", "id": f"a{i}", "target": f"e{i}"}))
                ack, _ = recv_until(ws, "ack")
                assert ack["position"] == i + 1
            # a long edit is running when the server dies
            ws.send(encode_frame({"type": "edit", "id": "long", "prompt": "p", "steps": 100},
                                 [Part("mask", mask_png(box_mask(64, 64, (0, 0, 64, 64))), "image/png")]))
            recv_until(ws, "progress")
            sigkill(proc)
    with server(data, port):
        detail = json.loads(get(port, f"/api/sessions/{sid}"))
        assert detail["position"] == 2 and [e["seed"] for e in detail["history"]] == [None, 0, 1]
        assert np.array_equal(np.asarray(decode_png(get(port, f"/api/sessions/{sid}/image"))), np.asarray(current))
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            ws.send(json.dumps({"type": "hello", "id": "h", "protocol": 1, "session": sid}))
            ready, _ = recv(ws)
            assert ready["type"] == "ready" and ready["position"] == 2
            h, parts = recv(ws)
            assert h["type"] == "canvas" and np.array_equal(np.asarray(decode_png(parts["image"])), np.asarray(current))


def test_a_result_not_yet_accepted_survives_a_restart_and_is_accepted_once(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    im = noise_image(64, 64, seed=7)
    with server(data, port) as proc:
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            sid = open_canvas(ws, im)
            mask = box_mask(64, 64, (10, 12, 40, 44))
            ws.send(encode_frame({"type": "edit", "id": "e0", "prompt": "a red hat", "steps": 1, "seed": 3},
                                 [Part("mask", mask_png(mask), "image/png")]))
            h, parts = recv_until(ws, "result")
            expected = paste(im, decode_png(parts["image"]).convert("RGB"), h["box"])
            assert not np.array_equal(np.asarray(expected), np.asarray(im))
        sigkill(proc)
    with server(data, port):
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            ws.send(json.dumps({"type": "hello", "id": "h", "protocol": 1, "session": sid}))
            assert recv(ws)[0]["type"] == "ready"
            assert recv(ws)[0]["type"] == "canvas"
            ws.send(json.dumps({"type": "accept", "id": "a", "target": "e0"}))
            ack, _ = recv_until(ws, "ack")
            assert ack["position"] == 1
            ws.send(json.dumps({"type": "accept", "id": "again", "target": "e0"}))
            err, _ = recv_until(ws, "error")
            assert err["id"] == "again" and err["code"] == "unknown_target"
        detail = json.loads(get(port, f"/api/sessions/{sid}"))
        assert [(e["prompt"], e["seed"]) for e in detail["history"]] == [(None, None), ("a red hat", 3)]
        assert np.array_equal(np.asarray(decode_png(get(port, f"/api/sessions/{sid}/image"))), np.asarray(expected))
