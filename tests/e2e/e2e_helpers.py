"""Page helpers for the e2e tests (drive the real UI with the mouse and keyboard)."""
from __future__ import annotations

HOOK = "window.__lazyedit"


def hook(page, expr: str):
    return page.evaluate(f"{HOOK}.{expr}")


def wait_hook(page, cond: str, timeout: float = 30_000):
    page.wait_for_function(f"window.__lazyedit && ({cond.replace('$', HOOK)})", timeout=timeout)


def open_app(page, server) -> None:
    page.goto(server.url + "/")
    wait_hook(page, "$.connection === 'open' && $.sessionId !== null")


def open_image(page, path) -> None:
    page.get_by_test_id("file-input").set_input_files(str(path))
    wait_hook(page, "$.canvasSize !== null && $.historyLength >= 1")


def client_point(page, x: float, y: float) -> tuple[float, float]:
    p = page.evaluate(f"{HOOK}.imageToClient({x}, {y})")
    return p["x"], p["y"]


def drag(page, points: list[tuple[float, float]], steps_between: int = 6) -> None:
    """Press, move through image-space points, release."""
    cx, cy = client_point(page, *points[0])
    page.mouse.move(cx, cy)
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        for i in range(1, steps_between + 1):
            t = i / steps_between
            px, py = client_point(page, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
            page.mouse.move(px, py)
    page.mouse.up()


def generate_and_wait(page, prompt: str, timeout: float = 120_000) -> None:
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("prompt").press("Enter")
    wait_hook(page, "$.resultShown", timeout=timeout)
