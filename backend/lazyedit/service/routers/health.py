from __future__ import annotations

from fastapi import APIRouter

from ... import __version__
from ..deps import HubDep
from ..protocol import Health

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness, model and protocol version (no token needed)")
def health(hub: HubDep) -> Health:
    return Health(model=hub.model_name, device=hub.device, version=__version__)
