"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Depends, Header, HTTPException, Request

from .hub import Hub
from .security import bearer, owner_digest, token_ok

#: the request header that carries the browser's owner key (docs/service.md, "Whose sessions")
OWNER_HEADER = "X-Lazyedit-Owner"


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


def http_error(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message})


def require_token(request: Request, authorization: Annotated[Optional[str], Header()] = None) -> None:
    if not token_ok(request.app.state.hub.settings, bearer(authorization)):
        raise HTTPException(status_code=401, detail={"code": "unauthorized", "message": "missing or bad token"},
                            headers={"WWW-Authenticate": "Bearer"})


def request_owner(x_lazyedit_owner: Annotated[Optional[str], Header(
        description="the browser's owner key: sessions it creates are its own, and only its own are listed and "
                    "deleted with it")] = None) -> str:
    """The owner digest of the request ("" without an owner key)."""
    try:
        return owner_digest(x_lazyedit_owner)
    except ValueError as exc:
        raise http_error(400, "bad_owner", f"{OWNER_HEADER}: {exc}") from None


OwnerDep = Annotated[str, Depends(request_owner)]
