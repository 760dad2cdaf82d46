"""Helpers for the service tests (no tests here): app/client factories, images, a WebSocket wrapper."""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np
from PIL import Image
from starlette.testclient import TestClient

from lazyedit.service import ServiceSettings, create_app
from lazyedit.service.framing import Part, decode_frame, encode_frame

BASE_URL = "http://127.0.0.1:7860"


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def noise_image(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def box_mask(w: int, h: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def mask_png(mask: np.ndarray) -> bytes:
    return png(Image.fromarray(mask.astype(np.uint8) * 255, "L"))


def decode_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@contextmanager
def service(data_dir, pipeline, **overrides):
    settings = ServiceSettings(data_dir=data_dir, model="tiny", device="cpu", **overrides)
    app = create_app(settings, pipeline=pipeline)
    with TestClient(app, base_url=BASE_URL) as client:
        yield client


def prepared_count(client, at_least: int, timeout: float = 60.0) -> int:
    """The server's count of finished prepares, once it reaches ``at_least`` (or the timeout passes)."""
    sched = client.app.state.hub.scheduler
    deadline = time.time() + timeout
    while sched.stats()["prepared"] < at_least and time.time() < deadline:
        time.sleep(0.02)
    return sched.stats()["prepared"]


class WS:
    """A thin wrapper over a TestClient WebSocket speaking protocol v1."""

    def __init__(self, ws):
        self.ws = ws

    def send(self, obj: dict) -> None:
        self.ws.send_text(json.dumps(obj))

    def send_frame(self, header: dict, parts: dict[str, tuple[bytes, str]] | None = None) -> None:
        self.ws.send_bytes(encode_frame(header, [Part(n, d, m) for n, (d, m) in (parts or {}).items()]))

    def recv(self) -> tuple[dict, dict[str, bytes]]:
        msg = self.ws.receive()
        if msg.get("type") == "websocket.close":
            return {"type": "__closed__", "code": msg.get("code")}, {}
        if msg.get("bytes") is not None:
            header, parts = decode_frame(msg["bytes"])
            return header, {k: p.data for k, p in parts.items()}
        return json.loads(msg["text"]), {}

    def recv_until(self, *types: str, max_msgs: int = 500) -> tuple[list[dict], dict[str, bytes]]:
        """Collect messages until one of ``types`` arrives; returns (all headers, that message's parts)."""
        seen = []
        for _ in range(max_msgs):
            header, parts = self.recv()
            seen.append(header)
            if header["type"] in types:
                return seen, parts
        raise AssertionError(f"no {types} in {max_msgs} messages: {[h['type'] for h in seen][-10:]}")

    # protocol steps -------------------------------------------------------------------------------
    def hello(self, session: Optional[str] = None, rid: str = "h", owner: Optional[str] = None) -> dict:
        msg: dict[str, Any] = {"type": "hello", "id": rid, "protocol": 1}
        if session:
            msg["session"] = session
        if owner:
            msg["owner"] = owner
        self.send(msg)
        header, _ = self.recv()
        assert header["type"] == "ready", header
        return header

    def canvas(self, im: Image.Image, rid: str = "c") -> dict:
        self.send_frame({"type": "canvas", "id": rid}, {"image": (png(im), "image/png")})
        header, _ = self.recv()
        assert header["type"] == "ack" and header["of"] == "canvas", header
        return header

    def edit(self, mask: np.ndarray, rid: str = "e", prompt: str = "a red star", **fields) -> None:
        self.send_frame({"type": "edit", "id": rid, "prompt": prompt, **fields},
                        {"mask": (mask_png(mask), "image/png")})

    def edit_result(self, mask: np.ndarray, rid: str = "e", **fields) -> tuple[list[dict], dict, Image.Image]:
        self.edit(mask, rid, **fields)
        seen, parts = self.recv_until("result", "error", "cancelled")
        assert seen[-1]["type"] == "result", seen[-1]
        return seen, seen[-1], decode_png(parts["image"])

    def accepted_edit(self, im: Image.Image, mask: np.ndarray, rid: str = "e", **fields) -> Image.Image:
        """Send ``im`` as the canvas, edit it and accept the result; returns the image the server now holds."""
        self.canvas(im)
        _, result, region = self.edit_result(mask, rid, **fields)
        self.send({"type": "accept", "id": f"accept-{rid}", "target": rid})
        ack, _ = self.recv()
        assert ack["type"] == "ack" and ack["of"] == "accept", ack
        return paste(im, region.convert("RGB"), result["box"])


def paste(base: Image.Image, region: Image.Image, box) -> Image.Image:
    out = base.copy()
    out.paste(region, (box[0], box[1]))
    return out


def s3_environment(endpoint: str) -> dict[str, str]:
    """What a deployment sets for boto3 to reach an S3-compatible server (test credentials)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1"}


def s3_client(endpoint: str):
    """A boto3 client of that server, for a test's own look at the bucket."""
    import boto3

    env = s3_environment(endpoint)
    return boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
