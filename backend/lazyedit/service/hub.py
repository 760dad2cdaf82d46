"""Service state shared by the routers: settings, pipeline, storage, scheduler and live sessions.

A ``SessionRuntime`` is the in-memory side of a stored session: its decoded current image, the
results not yet accepted, and the WebSocket connection (at most one) it talks to. Messages for a
session are routed to its *current* connection, so a browser that reconnects (``hello`` with the
session id) receives what its edits produce from then on, and what finished while it was away.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from PIL import Image

from . import protocol as P
from ..images import encode_png
from .scheduler import EditScheduler, Job, PrepareJob
from .settings import ServiceSettings, default_context_window
from .storage import SessionState, Storage, iso, new_session_id, valid_session_id

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("lazyedit.service")

RUNTIME_IDLE_S = 15 * 60


@dataclass
class PendingResult:
    image: Image.Image
    base_sha: str
    prompt: str
    seed: int


@dataclass
class Outgoing:
    """A message waiting in a connection's ordered queue."""

    data: Any                      # str (text frame) or bytes (binary frame)
    job: Optional[Job] = None      # the edit a terminal message (result / cancelled / error) ends
    kind: str = ""


class SessionRuntime:
    def __init__(self, sid: str, state: Optional[SessionState]):
        self.id = sid
        self.state = state                      # None until the first canvas
        self.image: Optional[Image.Image] = None
        self.conn: Optional["Connection"] = None
        self.results: "OrderedDict[str, PendingResult]" = OrderedDict()
        self.undelivered: deque[Outgoing] = deque(maxlen=8)
        self.lock = asyncio.Lock()
        self.detached_at = time.monotonic()

    @property
    def sha(self) -> Optional[str]:
        return self.state.current.image_sha if self.state else None


def history_models(state: Optional[SessionState]) -> list[P.HistoryEntry]:
    if state is None:
        return []
    return [P.HistoryEntry(index=e.index, prompt=e.prompt, seed=e.seed, created=iso(e.created)) for e in state.history]


class Hub:
    def __init__(self, settings: ServiceSettings, pipe: Any, storage: Storage):
        self.settings = settings
        self.pipe = pipe
        self.storage = storage
        self.scheduler = EditScheduler(pipe, max_queue=settings.max_queue, max_batch=settings.max_batch)
        self.sessions: dict[str, SessionRuntime] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.max_pixels = settings.max_pixels
        window = default_context_window(self.device) if settings.context_window is None else settings.context_window
        self.context_window = window or None
        if hasattr(pipe, "context_window"):
            pipe.context_window = self.context_window

    # ---- model facts --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(getattr(self.pipe, "model_name", self.settings.model))

    @property
    def device(self) -> str:
        return str(getattr(self.pipe, "device", self.settings.device))

    def limits(self) -> P.Limits:
        lim = dict(getattr(self.pipe, "limits", {}) or {})
        s = self.settings
        return P.Limits(max_pixels=self.max_pixels, max_image_bytes=s.max_image_bytes,
                        max_message_bytes=s.max_message_bytes, max_prompt_chars=s.max_prompt_chars,
                        min_steps=int(lim.get("min_steps", 1)), max_steps=int(lim.get("max_steps", 50)),
                        min_guidance=float(lim.get("min_guidance", 0.0)),
                        max_guidance=float(lim.get("max_guidance", 20.0)), results_kept=s.results_kept)

    # ---- sessions -----------------------------------------------------------------------------
    def new_runtime(self) -> SessionRuntime:
        rt = SessionRuntime(new_session_id(), None)
        self.sessions[rt.id] = rt
        return rt

    async def runtime(self, sid: str) -> Optional[SessionRuntime]:
        if not valid_session_id(sid):
            return None
        rt = self.sessions.get(sid)
        if rt is not None:
            if rt.conn is None and rt.state is not None and not self.scheduler.busy(sid):
                # Detached: another replica may have served (or deleted) the session since; the stored row wins.
                stored = await asyncio.to_thread(self.storage.get, sid)
                if stored is None:
                    self.sessions.pop(sid, None)
                    return None
                if stored.version != rt.state.version:
                    # the stored row is the truth; outcomes of edits this replica ran still go to the client
                    rt.state, rt.image = stored, None
            return rt
        state = await asyncio.to_thread(self.storage.get, sid)
        if state is None:
            return None
        rt = self.sessions.get(sid)          # another coroutine may have loaded it meanwhile
        if rt is None:
            rt = self.sessions[sid] = SessionRuntime(sid, state)
        return rt

    async def current_image(self, rt: SessionRuntime) -> Image.Image:
        if rt.image is None:
            assert rt.state is not None
            data = await asyncio.to_thread(self.storage.blobs.get, rt.sha)
            rt.image = await asyncio.to_thread(lambda: Image.open(io.BytesIO(data)).convert("RGB"))
        return rt.image

    async def pending_result(self, rt: SessionRuntime, edit_id: str) -> Optional[PendingResult]:
        """The un-accepted result ``edit_id``: from memory, else from storage (made before a restart or by
        another replica; rebuilt by pasting its region into the current image when that is its base)."""
        pending = rt.results.get(edit_id)
        if pending is not None:
            return pending
        stored = await asyncio.to_thread(self.storage.result, rt.id, edit_id)
        if stored is None:
            return None
        image = None
        if stored.base_sha == rt.sha:
            base = await self.current_image(rt)

            def paste() -> Image.Image:
                out = base.copy()
                out.paste(Image.open(io.BytesIO(stored.region)).convert("RGB"), stored.box[:2])
                return out

            image = await asyncio.to_thread(paste)
        return PendingResult(image, stored.base_sha, stored.prompt, stored.seed)  # type: ignore[arg-type]

    def open_sessions_of(self, client: str) -> int:
        return sum(1 for rt in self.sessions.values() if rt.conn is not None and rt.conn.client == client)

    def gc_runtimes(self) -> None:
        now = time.monotonic()
        for sid, rt in list(self.sessions.items()):
            if rt.conn is None and now - rt.detached_at > RUNTIME_IDLE_S and not self.scheduler.busy(sid):
                del self.sessions[sid]

    async def delete_session(self, sid: str) -> bool:
        rt = self.sessions.pop(sid, None)
        if rt is not None:
            self.scheduler.cancel_session(sid)
            if rt.conn is not None:
                conn, rt.conn = rt.conn, None
                conn.session = None
                conn.send_error(None, "unknown_session", "this session was deleted")
        return await asyncio.to_thread(self.storage.delete, sid)

    async def prepare(self, rt: SessionRuntime, mask=None, req_id: Optional[str] = None, answer: bool = False) -> None:
        """Queue a head start for the session's next edit: the current canvas's latent, and with ``mask`` that
        mask's context and the decoder's features of the pixels around it. With ``answer`` the session's
        connection hears ``prepared`` once it is done."""
        if rt.state is None:
            return
        image = await self.current_image(rt)
        loop = self.loop

        def done(timings: dict) -> None:  # worker thread
            if not answer or loop is None:
                return
            ms = {k: round(float(v), 2) for k, v in timings.items() if k.endswith("_ms")}
            msg = Outgoing(P.Prepared(id=req_id, timings=ms).model_dump_json())
            try:
                loop.call_soon_threadsafe(lambda: rt.conn.enqueue(msg) if rt.conn is not None else None)
            except RuntimeError:  # loop closed: server shutting down
                pass

        self.scheduler.submit_prepare(PrepareJob(session_id=rt.id, image=image, canvas_key=rt.sha or "", mask=mask,
                                                 done=done))

    # ---- edit events from the worker thread ---------------------------------------------------
    def make_emitter(self, rt: SessionRuntime, job: Job):
        loop = self.loop
        assert loop is not None
        quality = self.settings.preview_quality

        def emit(kind: str, payload: Any) -> None:   # worker thread (or submitter for superseded)
            if kind == "result":
                region = payload.region if getattr(payload, "region", None) is not None else payload.image.crop(payload.box)
                png = encode_png(region, compress_level=1)
                timings = {k: round(float(v), 2) for k, v in (payload.timings or {}).items()
                           if k.endswith("_ms") and isinstance(v, (int, float)) and not isinstance(v, bool)}
                timings.update(job.timings())
                header = P.Result(id=job.edit_id, seed=int(payload.seed), box=tuple(int(v) for v in payload.box),
                                  timings=timings, steps=int(payload.steps))
                if job.edit_id is not None:
                    # stored before the client can see it, so an accept always finds it (after a restart, or on
                    # another replica); best effort: the in-memory copy still serves this server's accept
                    try:
                        self.storage.put_result(rt.id, job.edit_id, png, header.box, job.canvas_key, job.prompt,
                                                header.seed, self.settings.results_kept)
                    except Exception:
                        log.exception("could not store the result of edit %s", job.edit_id)
                payload = (header, png, payload.image)
            elif kind == "progress":
                payload = (payload, quality)
            try:
                loop.call_soon_threadsafe(self._deliver, rt, job, kind, payload)
            except RuntimeError:    # loop closed: server shutting down
                pass

        return emit

    def _deliver(self, rt: SessionRuntime, job: Job, kind: str, payload: Any) -> None:
        from .framing import Part, encode_frame

        if kind == "progress":
            if rt.conn is not None:
                rt.conn.post_preview(job, payload)
            return
        if kind == "result":
            header, png, image = payload
            if job.edit_id is not None:
                rt.results[job.edit_id] = PendingResult(image, job.canvas_key, job.prompt, header.seed)
                while len(rt.results) > self.settings.results_kept:
                    rt.results.popitem(last=False)
            msg = Outgoing(encode_frame(header.model_dump(mode="json"), [Part("image", png, "image/png")]), job, kind)
        elif kind == "cancelled":
            msg = Outgoing(P.Cancelled(id=job.edit_id).model_dump_json(), job, kind)
        else:
            code, message = payload
            msg = Outgoing(P.Error(id=job.edit_id, code=code, message=message).model_dump_json(), job, kind)
        if rt.conn is not None:
            rt.conn.enqueue(msg)
        else:
            rt.undelivered.append(msg)
