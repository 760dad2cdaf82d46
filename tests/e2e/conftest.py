"""Fixtures for the browser end-to-end tests: a real `lazyedit serve --model tiny` and headless Chromium.

Run from the repository root:  .venv/bin/python -m pytest tests/e2e -q
Needs: the built frontend (cd frontend && npm ci && npm run build), /usr/bin/chromium (or $CHROMIUM),
and the `playwright` Python package (no Playwright-managed browser download is needed).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("LAZYEDIT_E2E_SHOTS", "/tmp/lazyedit-e2e"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]

playwright_api = pytest.importorskip("playwright.sync_api")


def _lazyedit_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lazyedit")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("lazyedit")
    if found:
        return [found]
    return [sys.executable, "-m", "lazyedit.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `lazyedit serve` subprocess; can be stopped and started again on the same port and data dir."""

    def __init__(self, data_dir: Path, extra: list[str], port: int | None = None):
        self.data_dir = data_dir
        self.extra = extra
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "Server":
        cmd = _lazyedit_cmd() + ["serve", "--model", "tiny", "--data-dir", str(self.data_dir),
                                 "--port", str(self.port), "--frontend-dir", str(DIST), *self.extra]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyedit serve exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"lazyedit serve did not come up:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


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
