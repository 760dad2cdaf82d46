"""Load benchmark of the service: latency to first preview and to result, 16 clients at once
(fairness, p95, server RSS), batching on against off in the same run. Prints JSON.

It starts its own servers (``python -m lazyedit.service``, one with batching off, one with it on) on
free ports with a throw-away data folder, and talks to them over real WebSockets.

    python -m lazyedit.service.loadbench --model tiny --clients 16 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from .framing import Part, decode_frame, encode_frame


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _pct(xs: list[float], p: float) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))
    return round(s[k], 1)


def _summary(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "median_ms": round(statistics.median(xs), 1) if xs else None, "p95_ms": _pct(xs, 95),
            "max_ms": round(max(xs), 1) if xs else None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, device: str, max_batch: int, max_queue: int, data_dir: str):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "lazyedit.service", "--model", model, "--device", device, "--port", str(self.port),
               "--data-dir", data_dir, "--max-batch", str(max_batch), "--max-queue", str(max_queue),
               "--max-sessions-per-client", "64", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server failed to start:\n" + self.proc.stderr.read().decode()[-4000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=1) as r:
                    self.health = json.load(r)
                    break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError("server did not start in time")
                time.sleep(0.3)
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Client:
    def __init__(self, url: str, size: int, mask_frac: float, seed: int):
        self.url, self.size, self.mask_frac = url, size, mask_frac
        self.rng = np.random.default_rng(seed)
        self.canvas = Image.fromarray((self.rng.random((size, size, 3)) * 255).astype(np.uint8))
        self.n = 0

    async def open(self):
        import websockets

        self.ws = await websockets.connect(self.url, max_size=None)
        await self.ws.send(json.dumps({"type": "hello", "id": "h", "protocol": 1}))
        ready = json.loads(await self.ws.recv())
        self.session = ready["session"]
        await self.ws.send(encode_frame({"type": "canvas", "id": "c"}, [Part("image", _png(self.canvas), "image/png")]))
        ack = await self._recv()
        assert ack[0]["type"] == "ack", ack[0]
        return self

    async def _recv(self):
        msg = await self.ws.recv()
        if isinstance(msg, bytes):
            h, parts = decode_frame(msg)
            return h, parts
        return json.loads(msg), {}

    def _mask(self) -> bytes:
        side = int(round(self.size * math.sqrt(self.mask_frac)))
        x0, y0 = (int(v) for v in self.rng.integers(0, self.size - side + 1, 2))
        m = np.zeros((self.size, self.size), np.uint8)
        m[y0:y0 + side, x0:x0 + side] = 255
        return _png(Image.fromarray(m, "L"))

    async def edit(self, steps: Optional[int]) -> dict[str, Any]:
        self.n += 1
        rid = f"e{self.n}"
        fields: dict[str, Any] = {"type": "edit", "id": rid, "prompt": "a red star", "seed": self.n}
        if steps:
            fields["steps"] = steps
        t0 = time.perf_counter()
        await self.ws.send(encode_frame(fields, [Part("mask", self._mask(), "image/png")]))
        first = None
        previews = 0
        while True:
            h, _ = await self._recv()
            if h.get("id") != rid:
                continue
            if h["type"] == "progress":
                previews += 1
                if first is None:
                    first = (time.perf_counter() - t0) * 1000
            elif h["type"] in ("result", "error", "cancelled"):
                return {"type": h["type"], "code": h.get("code"), "first_ms": first,
                        "result_ms": (time.perf_counter() - t0) * 1000, "previews": previews,
                        "server_ms": (h.get("timings") or {}).get("service_total_ms"), "t_done": time.perf_counter()}

    async def close(self):
        await self.ws.close()


async def latency_phase(url: str, args) -> dict[str, Any]:
    c = await Client(url, args.size, args.mask_frac, 1234).open()
    outs = []
    for _ in range(args.warmup):
        await c.edit(args.steps)
    for _ in range(args.latency_edits):
        outs.append(await c.edit(args.steps))
    await c.close()
    ok = [o for o in outs if o["type"] == "result"]
    return {"edits": len(outs), "errors": len(outs) - len(ok),
            "first_progress": _summary([o["first_ms"] for o in ok if o["first_ms"] is not None]),
            "result": _summary([o["result_ms"] for o in ok])}


async def concurrent_phase(server: Server, args) -> dict[str, Any]:
    clients = [await Client(server.url, args.size, args.mask_frac, 100 + i).open() for i in range(args.clients)]
    for c in clients:   # one warm-up edit each: caches filled before timing
        await c.edit(args.steps)
    done: list[tuple[float, int, dict]] = []
    rss: list[float] = []
    stop_at = time.perf_counter() + args.duration
    t_start = time.perf_counter()

    async def run(i: int, c: Client):
        while time.perf_counter() < stop_at:
            out = await c.edit(args.steps)
            done.append((out["t_done"], i, out))

    async def sample():
        while time.perf_counter() < stop_at:
            rss.append(server.rss_mb())
            await asyncio.sleep(0.25)

    rss.append(server.rss_mb())
    await asyncio.gather(sample(), *(run(i, c) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - t_start
    rss.append(server.rss_mb())
    for c in clients:
        await c.close()
    done.sort(key=lambda d: d[0])
    counts = [0] * len(clients)
    max_spread = 0
    for _, i, _ in done:
        counts[i] += 1
        max_spread = max(max_spread, max(counts) - min(counts))
    outs = [d[2] for d in done]
    ok = [o for o in outs if o["type"] == "result"]
    return {"clients": len(clients), "duration_s": round(elapsed, 2), "edits": len(outs),
            "answered": len(outs), "errors": len(outs) - len(ok),
            "error_codes": sorted({o["code"] or o["type"] for o in outs if o["type"] != "result"}),
            "edits_per_s": round(len(ok) / elapsed, 3),
            "result": _summary([o["result_ms"] for o in ok]),
            "first_progress": _summary([o["first_ms"] for o in ok if o["first_ms"] is not None]),
            "fairness": {"edits_per_session_min": min(counts), "edits_per_session_max": max(counts),
                         "max_spread_jobs": max_spread,
                         "ok": max_spread <= 2},
            "server_rss_mb": {"start": round(rss[0], 1), "max": round(max(rss), 1), "end": round(rss[-1], 1)}}


async def bench(args) -> dict[str, Any]:
    report: dict[str, Any] = {"model": args.model, "device": args.device, "canvas": [args.size, args.size],
                              "mask_fraction": args.mask_frac, "steps": args.steps, "clients": args.clients,
                              "duration_s": args.duration}
    with tempfile.TemporaryDirectory(prefix="lazyedit-loadbench-") as tmp:
        configs = [("batching_off", 1), ("batching_on", args.max_batch)]
        for name, mb in configs:
            server = Server(args.model, args.device, mb, max(64, args.clients * 2), os.path.join(tmp, name))
            try:
                report["server"] = server.health
                phase: dict[str, Any] = {"max_batch": mb}
                if name == "batching_on":
                    phase["single_client"] = await latency_phase(server.url, args)
                phase["concurrent"] = await concurrent_phase(server, args)
                report[name] = phase
            finally:
                server.stop()
    off, on = report["batching_off"]["concurrent"], report["batching_on"]["concurrent"]
    report["batching_gain"] = round(on["edits_per_s"] / off["edits_per_s"], 3) if off["edits_per_s"] else None
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazyedit loadbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--size", type=int, default=512, help="square canvas side (pixels)")
    p.add_argument("--mask-frac", type=float, default=0.10, help="masked fraction of the canvas")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of the concurrent run, per configuration")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--latency-edits", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p


def loadbench_main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    report = asyncio.run(bench(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    ok = all(report[k]["concurrent"]["errors"] == 0 for k in ("batching_off", "batching_on"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(loadbench_main())
