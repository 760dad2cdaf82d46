"""Token and Origin/Host checks."""

from __future__ import annotations

import secrets
from typing import Optional
from urllib.parse import urlsplit

from .settings import ServiceSettings, is_loopback


def token_ok(settings: ServiceSettings, presented: Optional[str]) -> bool:
    if not settings.token:
        return True
    return presented is not None and secrets.compare_digest(presented.encode(), settings.token.encode())


def bearer(authorization: Optional[str]) -> Optional[str]:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _hostname(hostport: str) -> str:
    return (urlsplit("//" + hostport).hostname or "").lower()


def _norm_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def host_ok(settings: ServiceSettings, host_header: Optional[str]) -> bool:
    """Without a token only loopback names (or the bound / allowed names) may be used as Host:
    a page that re-binds its DNS name to 127.0.0.1 cannot talk to the service."""
    if settings.token or host_header is None:
        return True
    name = _hostname(host_header)
    if is_loopback(name) or name == settings.host.lower():
        return True
    return any(_hostname(urlsplit(o).netloc) == name for o in settings.allowed_origins)


def origin_ok(settings: ServiceSettings, origin: Optional[str], host_header: Optional[str]) -> bool:
    """Browsers always send Origin on WebSockets; clients that send none (tools, tests) are let through."""
    if origin is None:
        return True
    norm = _norm_origin(origin)
    if norm in {_norm_origin(o) for o in settings.allowed_origins}:
        return True
    parts = urlsplit(norm)
    if parts.scheme not in ("http", "https") or not host_header:
        return False
    if parts.netloc != host_header.strip().lower():
        return False
    return bool(settings.token) or is_loopback(parts.hostname or "")
