from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Path, Response, UploadFile, status

from ..deps import HubDep, OwnerDep, http_error, require_token
from ..hub import history_models
from ...engine import EditInputError
from ...images import decode_canvas_png
from ..protocol import HTTPErrorOut, SessionCreated, SessionDetail, SessionSummary
from ..storage import SESSION_ID_RE, StorageError, iso, new_session_id

router = APIRouter(prefix="/api/sessions", tags=["sessions"], dependencies=[Depends(require_token)],
                   responses={400: {"model": HTTPErrorOut, "description": "bad input: the image, or a malformed owner key"},
                              401: {"model": HTTPErrorOut, "description": "missing or bad token"}})

SessionId = Path(description="session id (22 URL-safe characters)", max_length=64)
NOT_FOUND = {404: {"model": HTTPErrorOut, "description": "unknown session"}}
PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}


def _check_id(sid: str) -> str:
    if not SESSION_ID_RE.fullmatch(sid):
        raise http_error(404, "unknown_session", "no such session")
    return sid


@router.post("", response_model=SessionCreated, status_code=status.HTTP_201_CREATED,
             summary="Create a session from an uploaded image (multipart field 'image')",
             responses={400: {"model": HTTPErrorOut}, 413: {"model": HTTPErrorOut}, 429: {"model": HTTPErrorOut}})
async def create_session(hub: HubDep, owner: OwnerDep, image: UploadFile = File(...)) -> SessionCreated:
    s = hub.settings
    data = await image.read(s.max_image_bytes + 1)
    if len(data) > s.max_image_bytes:
        raise http_error(413, "image_too_large", f"image over {s.max_image_bytes} bytes")

    try:
        im, png = await asyncio.to_thread(decode_canvas_png, data, max_bytes=s.max_image_bytes, max_pixels=hub.max_pixels)
    except EditInputError as exc:
        raise http_error(413 if exc.code == "image_too_large" else 400, exc.code, exc.message) from None
    sid = new_session_id()
    try:
        state = await asyncio.to_thread(hub.storage.set_canvas, sid, png, im.width, im.height, "rest",
                                        s.max_stored_sessions, owner)
    except StorageError as exc:
        raise http_error(429, exc.code, exc.message) from None
    rt = await hub.runtime(sid)
    if rt is not None:
        rt.image = im.convert("RGB")  # already decoded: the prepare need not read the PNG back
        await hub.prepare(rt)  # encode the canvas while the page opens its socket and the first mask is painted
    return SessionCreated(session=sid, width=state.width, height=state.height, version=state.version)


@router.get("", response_model=list[SessionSummary],
            summary="The sessions of the owner key sent (without one: those made without one), newest first")
async def list_sessions(hub: HubDep, owner: OwnerDep) -> list[SessionSummary]:
    items = await asyncio.to_thread(hub.storage.list, owner)
    return [SessionSummary(session=i.id, width=i.width, height=i.height, created=iso(i.created),
                           updated=iso(i.updated), edits=i.edits) for i in items]


@router.get("/{sid}", response_model=SessionDetail, responses=NOT_FOUND)
async def get_session(hub: HubDep, sid: str = SessionId) -> SessionDetail:
    state = await asyncio.to_thread(hub.storage.get, _check_id(sid))
    if state is None:
        raise http_error(404, "unknown_session", "no such session")
    return SessionDetail(session=state.id, width=state.width, height=state.height, version=state.version,
                         position=state.position, history=history_models(state))


@router.delete("/{sid}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND,
               summary="Delete a session of the owner key sent, its history and its images")
async def delete_session(hub: HubDep, owner: OwnerDep, sid: str = SessionId) -> Response:
    # another owner's session reads as unknown: a delete neither removes it nor tells that it exists
    if await asyncio.to_thread(hub.storage.owner, _check_id(sid)) != owner or not await hub.delete_session(sid):
        raise http_error(404, "unknown_session", "no such session")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{sid}/image", response_class=Response, responses={**PNG, **NOT_FOUND},
            summary="The session's current image")
async def current_image(hub: HubDep, sid: str = SessionId) -> Response:
    data = await asyncio.to_thread(hub.storage.image, _check_id(sid), None)
    if data is None:
        raise http_error(404, "unknown_session", "no such session")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/{sid}/history/{n}/image", response_class=Response, responses={**PNG, **NOT_FOUND},
            summary="The image of history entry n")
async def history_image(hub: HubDep, n: int, sid: str = SessionId) -> Response:
    _check_id(sid)
    data = await asyncio.to_thread(hub.storage.image, sid, n)
    if data is None:
        raise http_error(404, "unknown_session", "no such session or history entry")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"})
