"""Token, owner key and Origin/Host checks."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Optional
from urllib.parse import urlsplit

from .settings import ServiceSettings, is_loopback


def token_ok(settings: ServiceSettings, presented: Optional[str]) -> bool:
    if not settings.token:
        return True
    return presented is not None and secrets.compare_digest(presented.encode(), settings.token.encode())


#: an owner key: a random secret a browser makes once and keeps (22 URL-safe characters is 128 bits)
OWNER_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
OWNER_KEY_RULE = "22 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"


def owner_digest(key: Optional[str]) -> str:
    """What the database keeps of an owner key (None: no owner, ""): its SHA-256, so that a copy of the
    database does not hand out the keys that list and delete sessions. Raises ValueError for a malformed key."""
    if key is None:
        return ""
    if not OWNER_KEY_RE.fullmatch(key):
        raise ValueError(f"owner key must be {OWNER_KEY_RULE}")
    return hashlib.sha256(key.encode()).hexdigest()


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
