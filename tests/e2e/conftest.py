"""Fixtures for the browser end-to-end tests: a real `lazyedit serve --model tiny` and headless Chromium.

Run from the repository root:  .venv/bin/python -m pytest tests/e2e -q
Needs: the built frontend (cd frontend && npm ci && npm run build), /usr/bin/chromium (or $CHROMIUM),
and the `playwright` Python package (no Playwright-managed browser download is needed).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from e2e_harness import CHROMIUM, CHROMIUM_ARGS, DIST, SHOTS, Server  # noqa: E402

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="session")
def built_frontend() -> Path:
    if not (DIST / "index.html").exists():
        pytest.skip("frontend/dist is missing: run `cd frontend && npm ci && npm run build` first")
    return DIST


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture
def make_server(tmp_path, built_frontend):
    servers: list[Server] = []

    def make(*extra: str) -> Server:
        s = Server(tmp_path / f"data{len(servers)}", list(extra)).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    pg.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    ctx.close()


@pytest.fixture
def sample_png(tmp_path) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (512, 384), (90, 140, 200))
    d = ImageDraw.Draw(im)
    d.rectangle([50, 200, 460, 380], fill=(60, 160, 70))
    d.ellipse([300, 40, 400, 140], fill=(250, 220, 60))
    p = tmp_path / "sample.png"
    im.save(p)
    return p
