"""Example scenes: something to edit for a person who has no image of the demo model's world at hand."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Response

from ...images import encode_png
from ...training.world import example_scene, render_scene
from ..deps import require_token
from ..protocol import HTTPErrorOut

router = APIRouter(prefix="/api", tags=["examples"], dependencies=[Depends(require_token)],
                   responses={401: {"model": HTTPErrorOut, "description": "missing or bad token"}})

PROMPT_HEADER = "X-Lazyedit-Prompt"


def _example_png(seed: int, size: int) -> tuple[bytes, str]:
    scene, prompt = example_scene(seed)
    return encode_png(render_scene(scene, size)), prompt


@router.get("/example", response_class=Response,
            summary="A scene of the procedural world the demo model learned (PNG); a prompt to try in it comes in "
                    f"the {PROMPT_HEADER} header",
            responses={200: {"content": {"image/png": {}}, "description": "PNG image"}})
async def example(seed: int = Query(0, ge=0, le=2**31 - 1, description="which scene: the same seed, the same image"),
                  size: int = Query(512, ge=64, le=1024, description="width and height in pixels")) -> Response:
    png, prompt = await asyncio.to_thread(_example_png, seed, size)
    # a pure function of the query, so a browser may keep it
    return Response(png, media_type="image/png", headers={PROMPT_HEADER: prompt, "Cache-Control": "max-age=86400"})
