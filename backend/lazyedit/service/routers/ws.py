from __future__ import annotations

from fastapi import APIRouter, WebSocket

from .. import protocol as P
from ..connection import Connection
from ..security import origin_ok, token_ok

router = APIRouter()


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    hub = ws.app.state.hub
    settings = hub.settings
    await ws.accept()
    if not token_ok(settings, ws.query_params.get("token")):
        await ws.send_text(P.Error(code="unauthorized", message="missing or bad token").model_dump_json())
        await ws.close(P.CLOSE_UNAUTHORIZED)
        return
    if not origin_ok(settings, ws.headers.get("origin"), ws.headers.get("host")):
        await ws.send_text(P.Error(code="bad_origin", message="this Origin may not use the service").model_dump_json())
        await ws.close(P.CLOSE_BAD_ORIGIN)
        return
    client = ws.client.host if ws.client else "unknown"
    await Connection(ws, hub, client).run()
