"""The lazyedit service: REST + WebSocket API (docs/protocol.md), model worker, storage."""

from .app import create_app
from .settings import ServiceSettings

__all__ = ["create_app", "ServiceSettings"]
