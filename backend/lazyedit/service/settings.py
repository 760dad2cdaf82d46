"""All service settings in one pydantic-settings class (env prefix ``LAZYEDIT_``; CLI flags override)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: repo/frontend/dist, found from this file: service -> lazyedit -> backend -> repo root.
REPO_FRONTEND_DIST = Path(__file__).resolve().parents[3] / "frontend" / "dist"
#: Where a packaged build (the Docker image) puts the built frontend.
PACKAGE_STATIC = Path(__file__).resolve().parents[1] / "static"

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# The context encoder attends over every token it reads. On this project's 2-core CPU (demo model) a new 1% mask
# on a 2048x2048 canvas costs 6.7 s read whole, 6.2 s of it the context encoder, and 0.96 s through a 1024 px
# window (docs/service.md, "Canvas size"). A GPU reads the whole canvas, as the paper does (not timed yet).
CPU_CONTEXT_WINDOW = 1024


def default_context_window(device: str) -> int:
    """The context window when none is set: 0 (the whole canvas, as in the paper) but on a CPU."""
    return CPU_CONTEXT_WINDOW if device.startswith("cpu") else 0


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAZYEDIT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    model: str = Field("demo", description='"demo", "tiny" or a model folder')
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    data_dir: Path = Path("data")
    database_url: Optional[str] = Field(None, description="default: sqlite:///<data_dir>/lazyedit.db")
    image_store: Optional[str] = Field(None, description="default: <data_dir>/images; s3://bucket/prefix stores the "
                                       "images in an S3-compatible bucket (endpoint: AWS_ENDPOINT_URL)")
    token: Optional[str] = Field(None, min_length=1)
    frontend_dir: Optional[Path] = Field(None, description="built frontend; default frontend/dist or lazyedit/static")
    allowed_origins: list[str] = Field(default_factory=list, description="extra Origins allowed on /ws")
    trusted_proxies: list[str] = Field(default_factory=list,
                                       description="proxy addresses/CIDRs whose X-Forwarded-For is believed "
                                                   "(per-client limits behind nginx; docs/scaling.md)")

    max_pixels: int = Field(2048 * 2048, ge=1, description="largest canvas accepted, in pixels")
    context_window: Optional[int] = Field(None, ge=0, description="largest side, in pixels, of the part of a canvas "
                                          "an edit reads around its mask; 0 = the whole canvas; default 1024 on a "
                                          "CPU, 0 on a GPU (default_context_window)")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(500, ge=1)
    max_sessions_per_client: int = Field(8, ge=1, description="sessions open over WebSockets per client address")
    max_stored_sessions: int = Field(1000, ge=1)
    max_queue: int = Field(64, ge=1, description="edits waiting across all sessions")
    max_outgoing_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                    description="unsent bytes queued for one socket; a client that lets more pile "
                                                "up is too slow (or not reading) and is disconnected")
    max_batch: int = Field(8, ge=1, description="edits packed into one forward pass (1 = no batching)")
    results_kept: int = Field(4, ge=1, description="un-accepted results kept per session for accept")
    preview_quality: int = Field(70, ge=1, le=95)
    preview_every: int = Field(1, ge=1, description="send a preview every N steps")
    log_level: str = "info"

    @model_validator(mode="after")
    def _bind_needs_token(self) -> "ServiceSettings":
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"refusing to bind {self.host!r} without a token: pass --token (or bind 127.0.0.1)")
        if self.max_message_bytes < self.max_image_bytes:
            raise ValueError("max_message_bytes must be at least max_image_bytes")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lazyedit.db').resolve()}"

    @property
    def resolved_image_store(self) -> str:
        return self.image_store or str(self.data_dir / "images")

    @property
    def resolved_frontend_dir(self) -> Optional[Path]:
        for cand in (self.frontend_dir, REPO_FRONTEND_DIST, PACKAGE_STATIC):
            if cand is not None and (Path(cand) / "index.html").is_file():
                return Path(cand)
        return None
