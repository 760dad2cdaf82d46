"""Drawing benchmark: paint on a 4096x4096 image in headless Chromium and time every pointer event and frame.

    .venv/bin/python tests/e2e/bench_draw.py [--size 4096] [--strokes 12] [--moves 120] [--json out.json]

Starts a real `lazyedit serve --model tiny` (with a pixel cap large enough for the image), opens the
built editor (frontend/dist), paints mask, eraser and sketch strokes with the mouse (real input events
via the DevTools protocol) and prints JSON: handler time per pointermove, per pointerdown/up (stroke
start / commit) and render time per frame, in milliseconds, as measured inside the page.
Target: pointermove p95 under 8 ms.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_harness import CHROMIUM, CHROMIUM_ARGS, DIST, Server  # noqa: E402


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(round(p * (len(s) - 1))))]  # noqa: E731
    return {"n": len(s), "mean": round(statistics.fmean(s), 3), "p50": round(q(0.5), 3), "p95": round(q(0.95), 3),
            "p99": round(q(0.99), 3), "max": round(s[-1], 3)}


def make_image(path: Path, size: int) -> None:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([x * 255, y * 255, (1 - x) * 200], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, compress_level=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--strokes", type=int, default=12)
    ap.add_argument("--moves", type=int, default=120, help="pointer moves per stroke")
    ap.add_argument("--zoom", type=float, default=0, help="view scale to draw at (0 = fit to screen)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    if not (DIST / "index.html").exists():
        print("frontend/dist missing: cd frontend && npm ci && npm run build", file=sys.stderr)
        return 2

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        img = tmp / "big.png"
        make_image(img, args.size)
        px = args.size * args.size
        server = Server(tmp / "data", ["--max-pixels", str(px), "--max-image-bytes", str(256 << 20),
                                        "--max-message-bytes", str(256 << 20)]).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(120_000)
                page.goto(server.url + "/")
                page.wait_for_function("window.__lazyedit && window.__lazyedit.connection === 'open'")
                t0 = time.perf_counter()
                page.get_by_test_id("file-input").set_input_files(str(img))
                page.wait_for_function("window.__lazyedit.canvasSize !== null")
                open_s = time.perf_counter() - t0
                if args.zoom:
                    # zoom with the wheel until the scale is near the requested one
                    box = page.get_by_test_id("canvas").bounding_box()
                    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                    for _ in range(200):
                        s = page.evaluate("window.__lazyedit.view.scale")
                        if abs(s - args.zoom) / args.zoom < 0.1:
                            break
                        page.mouse.wheel(0, -100 if s < args.zoom else 100)
                view = page.evaluate("window.__lazyedit.view")
                box = page.get_by_test_id("canvas").bounding_box()
                cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                r = min(box["width"], box["height"]) * 0.35
                tools = ["tool-brush", "tool-brush", "tool-eraser", "tool-sketch"]
                page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                base = page.evaluate("(() => { const p = window.__lazyedit.perf(); return {e: p.events.length, d: p.edges.length, f: p.frames.length}; })()")
                t0 = time.perf_counter()
                import math
                for k in range(args.strokes):
                    page.get_by_test_id(tools[k % len(tools)]).click()
                    a0 = k * 0.7
                    pts = [(cx + r * math.cos(a0 + 3 * t) * (0.3 + 0.7 * t), cy + r * math.sin(a0 + 2 * t) * (0.3 + 0.7 * t))
                           for t in (i / args.moves for i in range(args.moves + 1))]
                    page.mouse.move(*pts[0])
                    page.mouse.down()
                    for q in pts[1:]:
                        page.mouse.move(*q)
                    page.mouse.up()
                page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                wall = time.perf_counter() - t0
                perf = page.evaluate("window.__lazyedit.perf()")
                coverage = page.evaluate("window.__lazyedit.maskCoverage()")
                browser.close()
        finally:
            server.stop()
    events, edges, frames = perf["events"][base["e"]:], perf["edges"][base["d"]:], perf["frames"][base["f"]:]
    out = {
        "image": [args.size, args.size],
        "view_scale": round(view["scale"], 4),
        "strokes": args.strokes,
        "moves_per_stroke": args.moves,
        "brush": "default (image side / 16 for the mask, / 100 for the sketch)",
        "open_image_s": round(open_s, 2),
        "pointermove_ms": summary(events),
        "pointerdown_up_ms": summary(edges),
        "frame_render_ms": summary(frames),
        "pointerdown_up_each_ms": [round(x, 1) for x in edges],
        "wall_s": round(wall, 2),
        "mask_pixels_after": coverage,
        "target_pointermove_p95_ms": 8,
        "ok": bool(events) and summary(events)["p95"] < 8,
        "browser": "headless Chromium, --disable-gpu (software canvas)",
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
