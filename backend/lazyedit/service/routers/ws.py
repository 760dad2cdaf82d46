from __future__ import annotations

from fastapi import APIRouter, WebSocket

from .. import protocol as P
from ..connection import ClientError, Connection
from ..security import origin_ok, token_ok

router = APIRouter()


class RoutedConnection(Connection):
    """A socket opened with ``/ws?session=ID`` (the routing key a proxy hashes to pick a replica,
    docs/scaling.md) serves that session only: every ``hello`` on it must name the same session."""

    def __init__(self, ws: WebSocket, hub, client: str, route_session: str):
        super().__init__(ws, hub, client)
        self.route_session = route_session

    async def _hello(self, msg: P.Hello) -> None:
        if msg.session != self.route_session:
            raise ClientError("bad_message", "hello.session must equal the ?session= of the WebSocket URL "
                                             "(open a socket without ?session= to start a new session)")
        await super()._hello(msg)


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
    route_session = ws.query_params.get("session")
    if route_session:
        await RoutedConnection(ws, hub, client, route_session).run()
    else:
        await Connection(ws, hub, client).run()
