"""Shared by the e2e tests and the drawing benchmark: paths, Chromium flags, a `lazyedit serve` subprocess."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "frontend" / "dist"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("LAZYEDIT_E2E_SHOTS", "/tmp/lazyedit-e2e"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]

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


