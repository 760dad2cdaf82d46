"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Depends, Header, HTTPException, Request

from .hub import Hub
from .security import bearer, token_ok


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


def http_error(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message})


def require_token(request: Request, authorization: Annotated[Optional[str], Header()] = None) -> None:
    if not token_ok(request.app.state.hub.settings, bearer(authorization)):
        raise HTTPException(status_code=401, detail={"code": "unauthorized", "message": "missing or bad token"},
                            headers={"WWW-Authenticate": "Bearer"})
