"""FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .hub import Hub
from .routers import examples, health, sessions, ws
from .security import host_ok
from .settings import ServiceSettings
from .storage import Storage

log = logging.getLogger("lazyedit.service")

_NO_FRONTEND = """<!doctype html><meta charset="utf-8"><title>lazyedit</title>
<p>The lazyedit service is running, but no built frontend was found.
Build it with <code>npm run build</code> in <code>frontend/</code> (or set <code>LAZYEDIT_FRONTEND_DIR</code>).
The API is documented at <a href="/docs">/docs</a>.</p>"""


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def load_model(settings: ServiceSettings) -> Any:
    from lazyedit.engine import load_pipeline

    return load_pipeline(settings.model, device=resolve_device(settings.device))


class _GuardMiddleware:
    """Pure ASGI: refuses foreign Host headers (DNS re-binding) and request bodies over the message cap."""

    def __init__(self, app, settings: ServiceSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["type"] == "http":
            if not host_ok(self.settings, headers.get("host")):
                return await JSONResponse({"detail": {"code": "bad_origin", "message": "Host not allowed"}},
                                          status_code=400)(scope, receive, send)
            limit = self.settings.max_message_bytes
            try:
                declared = int(headers.get("content-length", "0"))
            except ValueError:
                declared = 0
            if declared > limit:
                return await JSONResponse({"detail": {"code": "message_too_large",
                                                      "message": f"body over {limit} bytes"}},
                                          status_code=413)(scope, receive, send)
            seen = 0

            async def limited_receive():
                nonlocal seen
                msg = await receive()
                if msg["type"] == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > limit:
                        raise _BodyTooLarge()
                return msg

            try:
                return await self.app(scope, limited_receive, send)
            except _BodyTooLarge:
                return await JSONResponse({"detail": {"code": "message_too_large",
                                                      "message": f"body over {limit} bytes"}},
                                          status_code=413)(scope, receive, send)
        return await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Optional[ServiceSettings] = None, *, pipeline: Any = None,
               storage: Optional[Storage] = None) -> FastAPI:
    """Build the app. ``pipeline``: an already loaded LazyEditPipeline (else loaded at start-up); ``storage``: an
    already opened Storage (else opened at start-up from the settings); the app closes it when it stops."""
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal storage
        if storage is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            storage = await asyncio.to_thread(Storage, settings.resolved_database_url, settings.resolved_image_store)
        removed = await asyncio.to_thread(storage.sweep)
        if removed:
            log.info("start-up sweep removed %d unreferenced image file(s)", removed)
        pipe = pipeline if pipeline is not None else await asyncio.to_thread(load_model, settings)
        hub = Hub(settings, pipe, storage)
        hub.loop = asyncio.get_running_loop()
        hub.scheduler.start()
        app.state.hub = hub
        log.info("lazyedit service ready: model=%s device=%s data=%s db=%s images=%s", hub.model_name, hub.device,
                 settings.data_dir, storage.engine.url.render_as_string(hide_password=True), storage.blobs.location)
        try:
            yield
        finally:
            await asyncio.to_thread(hub.scheduler.stop)
            storage.close()

    app = FastAPI(title="lazyedit", version=__version__, lifespan=lifespan,
                  description="Interactive local image editing. WebSocket protocol: docs/protocol.md (/ws).")
    app.state.settings = settings
    app.include_router(health.router)
    app.include_router(sessions.router)
    app.include_router(examples.router)
    app.include_router(ws.router)

    frontend = settings.resolved_frontend_dir
    if frontend is not None:
        app.mount("/", StaticFiles(directory=frontend, html=True), name="frontend")
    else:
        @app.get("/", include_in_schema=False)
        def no_frontend() -> HTMLResponse:
            return HTMLResponse(_NO_FRONTEND)

    app.add_middleware(_GuardMiddleware, settings=settings)
    return app
