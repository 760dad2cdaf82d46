"""One WebSocket connection: parses and checks messages, talks to the hub, sends answers in order.

Outgoing traffic has two lanes: an ordered queue (ready, ack, canvas, result, cancelled, error: all
delivered, in order) and a one-slot preview mailbox (a newer preview replaces an unsent one, so a slow
client sees the newest preview and never a backlog). A result first flushes a preview of its own edit
still in the mailbox, so ``progress`` always precedes ``result``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, Optional

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import protocol as P
from .framing import FrameError, Part, decode_frame, encode_frame
from .hub import Hub, Outgoing, SessionRuntime, history_models
from ..engine import EditInputError
from ..images import decode_canvas_png, decode_mask, decode_sketch, encode_jpeg, encode_png, expand_canvas
from .scheduler import Job, QueueFull
from .security import owner_digest
from .storage import StorageError

log = logging.getLogger("lazyedit.service.ws")


async def run_to_end(coro: Any) -> Any:
    """Awaits ``coro`` so that it finishes even if the awaiting task is cancelled (a dropped socket).

    A state change writes storage in a thread, then installs the new state in memory; cut between the two,
    the session would be durable in one version and live in another.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its error has no one left to tell
        raise


class ClientError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _schema_error(exc: ValidationError) -> ClientError:
    errs = exc.errors()
    first = errs[0] if errs else {}
    loc = ".".join(str(x) for x in first.get("loc", ()))
    return ClientError("bad_message", f"{loc}: {first.get('msg', 'invalid')}" if loc else str(exc))


class Connection:
    def __init__(self, ws: WebSocket, hub: Hub, client: str):
        self.ws = ws
        self.hub = hub
        self.client = client
        self.owner = ""  # the owner digest hello named: the owner of a session this socket's first canvas creates
        self.session: Optional[SessionRuntime] = None
        self._out: deque[Outgoing] = deque()
        self._out_bytes = 0
        self._slot: Optional[tuple[Job, Any]] = None
        self._wake = asyncio.Event()
        self._closed = False

    # ---- outgoing --------------------------------------------------------------------------------
    def enqueue(self, msg: Outgoing) -> None:
        if self._closed:
            return
        over = bool(self._out) and self._out_bytes + len(msg.data) > self.hub.settings.max_outgoing_bytes
        self._out.append(msg)
        self._out_bytes += len(msg.data)
        if over:
            # Not reading (or far too slow): drop the socket rather than buffer without bound.
            log.warning("closing a socket that left %d bytes unread", self._out_bytes)
            self.abandon(P.CLOSE_TOO_SLOW)
        else:
            self._wake.set()

    def post_preview(self, job: Job, payload: Any) -> None:
        if not self._closed:
            self._slot = (job, payload)
            self._wake.set()

    def send_model(self, model: Any) -> None:
        self.enqueue(Outgoing(model.model_dump_json()))

    def send_error(self, req_id: Optional[str], code: str, message: str) -> None:
        self.send_model(P.Error(id=req_id, code=code, message=message))

    def send_frame(self, header: Any, parts: list[Part]) -> None:
        self.enqueue(Outgoing(encode_frame(header.model_dump(mode="json"), parts)))

    async def _send_preview(self, job: Job, payload: Any) -> None:
        preview, quality = payload
        jpeg = await asyncio.to_thread(encode_jpeg, preview.image, quality=quality)
        header = P.Progress(id=job.edit_id, step=int(preview.step), total=int(preview.total),
                            box=tuple(int(v) for v in preview.box))
        await self._raw_send(encode_frame(header.model_dump(mode="json"), [Part("preview", jpeg, "image/jpeg")]))

    async def _raw_send(self, data: Any) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_text(data)

    async def _sender(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out or self._slot is not None:
                    if self._out:
                        msg = self._out.popleft()
                        self._out_bytes -= len(msg.data)
                        if msg.job is not None and self._slot is not None and self._slot[0] is msg.job:
                            job, payload = self._slot
                            self._slot = None
                            if msg.kind == "result":
                                await self._send_preview(job, payload)
                        await self._raw_send(msg.data)
                    else:
                        job, payload = self._slot  # type: ignore[misc]
                        self._slot = None
                        await self._send_preview(job, payload)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sender failed")
            self._closed = True

    async def close(self, code: int) -> None:
        self._closed = True
        try:
            await self.ws.close(code)
        except Exception:
            pass

    # ---- main loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        sender = asyncio.create_task(self._sender())
        try:
            while not self._closed:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text, data = msg.get("text"), msg.get("bytes")
                req_id: Optional[str] = None
                try:
                    if text is not None:
                        if len(text) > self.hub.settings.max_message_bytes or \
                                len(text.encode("utf-8", "surrogatepass")) > self.hub.settings.max_message_bytes:
                            raise ClientError("message_too_large", "text frame over max_message_bytes")
                        req_id = await self._on_text(text)
                    elif data is not None:
                        if len(data) > self.hub.settings.max_message_bytes:
                            raise ClientError("message_too_large",
                                              f"{len(data)} bytes, limit {self.hub.settings.max_message_bytes}")
                        await self._on_binary(data)
                except ClientError as exc:
                    self.send_error(getattr(exc, "req_id", req_id), exc.code, exc.message)
                except Exception:
                    log.exception("handling a message failed")
                    self.send_error(req_id, "internal", "the server failed on this message")
        except WebSocketDisconnect:
            pass
        finally:
            self._closed = True
            self._detach()
            # give the sender a moment to flush, then stop it
            sender.cancel()
            try:
                await sender
            except (asyncio.CancelledError, Exception):
                pass

    def _detach(self) -> None:
        """Leave the session. Edit outcomes (result / cancelled / error) still queued here stay with it: its next
        socket sends them."""
        rt, self.session = self.session, None
        if rt is not None and rt.conn is self:
            rt.undelivered.extend(m for m in self._out if m.job is not None)
            self._out = deque(m for m in self._out if m.job is None)
            self._out_bytes = sum(len(m.data) for m in self._out)
            rt.conn = None
            rt.detached_at = time.monotonic()

    def abandon(self, code: int) -> None:
        """Stop serving this socket (taken over, or not reading) and close it; nothing of the session is lost."""
        self._detach()
        self._closed = True
        self._out.clear()
        self._out_bytes = 0
        asyncio.create_task(self.close(code))

    # ---- parsing ---------------------------------------------------------------------------------
    @staticmethod
    def _req_id(obj: dict) -> Optional[str]:
        rid = obj.get("id")
        return rid if isinstance(rid, str) and len(rid) <= 64 else None

    def _validate(self, obj: dict, binary: bool) -> Any:
        typ = obj.get("type")
        if not isinstance(typ, str) or typ not in P.ClientMessageTypes:
            raise ClientError("unknown_type" if isinstance(typ, str) else "bad_message",
                              f"unknown message type {typ!r}" if isinstance(typ, str) else "missing 'type'")
        if binary != (typ in P.BinaryMessageTypes):
            raise ClientError("bad_message", f"'{typ}' must be sent as a {'binary' if not binary else 'text'} frame")
        try:
            return P.client_message_adapter.validate_python(obj)
        except ValidationError as exc:
            raise _schema_error(exc) from None

    async def _on_text(self, text: str) -> Optional[str]:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ClientError("bad_json", f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ClientError("bad_message", "a message must be a JSON object")
        req_id = self._req_id(obj)
        try:
            msg = self._validate(obj, binary=False)
            if isinstance(msg, P.Hello):
                await self._hello(msg)
            elif isinstance(msg, P.Cancel):
                if self.session is not None:
                    self.hub.scheduler.cancel(self.session.id, msg.target)
            elif isinstance(msg, P.Accept):
                await self._accept(msg)
            elif isinstance(msg, P.Undo):
                await self._move(msg.id, -1, relative=True)
            elif isinstance(msg, P.Redo):
                await self._move(msg.id, +1, relative=True)
            elif isinstance(msg, P.Goto):
                await self._move(msg.id, msg.index, relative=False)
            elif isinstance(msg, P.Expand):
                await self._expand(msg)
        except ClientError as exc:
            exc.req_id = req_id  # type: ignore[attr-defined]
            raise
        return req_id

    async def _on_binary(self, data: bytes) -> None:
        try:
            header, parts = decode_frame(data)
        except FrameError as exc:
            err = ClientError(exc.code, exc.message)
            err.req_id = self._req_id(exc.header) if exc.header else None  # type: ignore[attr-defined]
            raise err from None
        req_id = self._req_id(header)
        try:
            msg = self._validate(header, binary=True)
            if isinstance(msg, P.CanvasIn):
                await self._canvas(msg, parts)
            elif isinstance(msg, P.PrepareIn):
                await self._prepare(msg, parts)
            else:
                await self._edit(msg, parts)
        except ClientError as exc:
            exc.req_id = req_id  # type: ignore[attr-defined]
            raise

    @staticmethod
    def _expect_parts(parts: dict[str, Part], required: set[str], optional: set[str] = frozenset()) -> None:
        missing = required - parts.keys()
        extra = parts.keys() - required - optional
        if missing:
            raise ClientError("bad_parts", f"missing part(s): {', '.join(sorted(missing))}")
        if extra:
            raise ClientError("bad_parts", f"unexpected part(s): {', '.join(sorted(extra))}")

    def _need_session(self) -> SessionRuntime:
        if self.session is None:
            raise ClientError("no_canvas", "send hello, then a canvas, first")
        return self.session

    # ---- handlers --------------------------------------------------------------------------------
    async def _hello(self, msg: P.Hello) -> None:
        hub = self.hub
        self.owner = owner_digest(msg.owner)  # the schema has checked the key's form
        if msg.session is not None:
            rt = await hub.runtime(msg.session)
            if rt is None:
                raise ClientError("unknown_session", "no such session (deleted, or never given a canvas)")
        else:
            rt = None
        hub.gc_runtimes()
        n_open = hub.open_sessions_of(self.client) - (1 if self.session is not None else 0)
        if rt is not None and rt.conn is not None and rt.conn is not self and rt.conn.client == self.client:
            n_open -= 1  # a takeover does not open one more
        if (rt is None or rt is not self.session) and n_open >= hub.settings.max_sessions_per_client:
            raise ClientError("too_many_sessions",
                              f"at most {hub.settings.max_sessions_per_client} open sessions per client")
        if rt is None:
            rt = hub.new_runtime()
        if self.session is not None and self.session is not rt:
            self._detach()
        if rt.conn is not None and rt.conn is not self:
            rt.conn.abandon(P.CLOSE_TAKEN_OVER)  # its client may be gone already
        rt.conn = self
        self.session = rt
        st = rt.state
        canvas = P.CanvasInfo(version=st.version, width=st.width, height=st.height) if st else None
        self.send_model(P.Ready(id=msg.id, session=rt.id, model=hub.model_name, device=hub.device,
                                limits=hub.limits(), canvas=canvas, history=history_models(st),
                                position=st.position if st else 0,
                                default_steps=int(getattr(hub.pipe, "default_steps", 20)),
                                default_guidance=float(getattr(hub.pipe, "default_guidance", 4.5))))
        if st is not None:
            png = await asyncio.to_thread(hub.storage.blobs.get, st.current.image_sha)
            self._send_canvas(msg.id, rt, png)
        while rt.undelivered:
            self.enqueue(rt.undelivered.popleft())

    def _send_canvas(self, req_id: Optional[str], rt: SessionRuntime, png: bytes) -> None:
        st = rt.state
        assert st is not None
        self.send_frame(P.CanvasOut(id=req_id, version=st.version, width=st.width, height=st.height,
                                    position=st.position, history=history_models(st)),
                        [Part("image", png, "image/png")])

    def _ack(self, req_id: Optional[str], of: str, rt: SessionRuntime) -> None:
        st = rt.state
        assert st is not None
        self.send_model(P.Ack(id=req_id, of=of, version=st.version, width=st.width, height=st.height,
                              position=st.position, history=history_models(st)))

    async def _canvas(self, msg: P.CanvasIn, parts: dict[str, Part]) -> None:
        if self.session is None:
            raise ClientError("unknown_session", "send hello first")
        rt = self.session
        self._expect_parts(parts, {"image"})
        s = self.hub.settings
        data = parts["image"].data

        try:
            im, png = await asyncio.to_thread(decode_canvas_png, data, max_bytes=s.max_image_bytes, max_pixels=self.hub.max_pixels)
        except EditInputError as exc:
            raise ClientError(exc.code, exc.message) from None
        async def commit() -> None:
            async with rt.lock:
                try:
                    rt.state = await asyncio.to_thread(self.hub.storage.set_canvas, rt.id, png, im.width, im.height,
                                                       self.client, s.max_stored_sessions, self.owner)
                except StorageError as exc:
                    raise ClientError(exc.code, exc.message) from None
                rt.image = im
                rt.results.clear()
                self.hub.scheduler.cancel_session(rt.id)

        await run_to_end(commit())
        self._ack(msg.id, "canvas", rt)
        await self.hub.prepare(rt)  # encode the new canvas while the first mask is painted

    async def _prepare(self, msg: P.PrepareIn, parts: dict[str, Part]) -> None:
        rt = self._need_session()
        if rt.state is None:
            raise ClientError("no_canvas", "send a canvas before preparing a mask")
        self._expect_parts(parts, {"mask"})
        mask, _ = await self._decode_mask_and_sketch(rt, parts)
        if not mask.any():
            raise ClientError("empty_mask", "the mask is empty: nothing to prepare")
        await self.hub.prepare(rt, mask, msg.id, answer=True)

    async def _edit(self, msg: P.EditIn, parts: dict[str, Part]) -> None:
        rt = self._need_session()
        if rt.state is None:
            raise ClientError("no_canvas", "send a canvas before editing")
        hub, s = self.hub, self.hub.settings
        if len(msg.prompt) > s.max_prompt_chars:
            raise ClientError("prompt_too_long", f"prompt of {len(msg.prompt)} characters, limit {s.max_prompt_chars}")
        lim = hub.limits()
        if msg.steps is not None and not lim.min_steps <= msg.steps <= lim.max_steps:
            raise ClientError("out_of_range", f"steps must be in {lim.min_steps}..{lim.max_steps}")
        if msg.guidance is not None and not lim.min_guidance <= msg.guidance <= lim.max_guidance:
            raise ClientError("out_of_range", f"guidance must be in {lim.min_guidance}..{lim.max_guidance}")
        if msg.sketch_strength is not None and not P.MIN_SKETCH_STRENGTH <= msg.sketch_strength <= P.MAX_SKETCH_STRENGTH:
            raise ClientError("out_of_range",
                              f"sketch_strength must be in {P.MIN_SKETCH_STRENGTH}..{P.MAX_SKETCH_STRENGTH}")
        if msg.seed is not None and not 0 <= msg.seed <= P.MAX_SEED:
            raise ClientError("out_of_range", f"seed must be in 0..{P.MAX_SEED}")
        self._expect_parts(parts, {"mask"}, {"sketch"})
        mask, sketch = await self._decode_mask_and_sketch(rt, parts)
        image = await hub.current_image(rt)
        if rt.state is None:  # deleted meanwhile
            raise ClientError("unknown_session", "this session was deleted")
        job = Job(session_id=rt.id, edit_id=msg.id, image=image, canvas_key=rt.sha or "", mask=mask,
                  prompt=msg.prompt, steps=int(msg.steps if msg.steps is not None else getattr(hub.pipe, "default_steps", 20)),
                  guidance=msg.guidance, seed=msg.seed, sketch=sketch,
                  sketch_strength=1.0 if msg.sketch_strength is None else float(msg.sketch_strength),
                  preview_every=s.preview_every)
        job.emit = hub.make_emitter(rt, job)
        try:
            hub.scheduler.submit(job)
        except QueueFull as exc:
            raise ClientError("queue_full", str(exc)) from None

    async def _decode_mask_and_sketch(self, rt: SessionRuntime, parts: dict[str, Part]):
        """The ``mask`` part (and the ``sketch`` part, if any) decoded and checked against the canvas size."""
        assert rt.state is not None
        size, max_bytes = (rt.state.width, rt.state.height), self.hub.settings.max_image_bytes
        mask_data = parts["mask"].data
        sketch_data = parts["sketch"].data if "sketch" in parts else None

        def decode():
            mask = decode_mask(mask_data, size=size, max_bytes=max_bytes)
            sketch = decode_sketch(sketch_data, size=size, max_bytes=max_bytes) if sketch_data else None
            return mask, sketch

        try:
            return await asyncio.to_thread(decode)
        except EditInputError as exc:
            raise ClientError(exc.code, exc.message) from None

    async def _accept(self, msg: P.Accept) -> None:
        rt = self._need_session()

        async def commit() -> None:
            async with rt.lock:
                pending = await self.hub.pending_result(rt, msg.target)
                if pending is None:
                    raise ClientError("unknown_target", f"no result named {msg.target!r} to accept")
                if pending.base_sha != rt.sha:
                    raise ClientError("unknown_target",
                                      "the canvas changed since this edit; it can no longer be accepted")
                png = await asyncio.to_thread(encode_png, pending.image)
                try:
                    rt.state = await asyncio.to_thread(self.hub.storage.append_edit, rt.id, png, pending.prompt,
                                                       pending.seed, msg.target)
                except StorageError as exc:
                    raise ClientError(exc.code, exc.message) from None
                rt.image = pending.image
                rt.results.pop(msg.target, None)

        await run_to_end(commit())
        self._ack(msg.id, "accept", rt)
        await self.hub.prepare(rt)  # the accepted canvas is the next edit's

    async def _expand(self, msg: P.Expand) -> None:
        rt = self._need_session()
        if rt.state is None:
            raise ClientError("no_canvas", "no canvas yet")
        limit = self.hub.max_pixels

        async def commit() -> bytes:
            async with rt.lock:
                st = rt.state
                width, height = st.width + msg.left + msg.right, st.height + msg.top + msg.bottom
                if width * height > limit:
                    raise ClientError("image_too_large", f"the expanded canvas would be {width}x{height} = "
                                                         f"{width * height} pixels, over the limit of {limit}")
                base = await self.hub.current_image(rt)
                image = await asyncio.to_thread(expand_canvas, base, msg.left, msg.top, msg.right, msg.bottom)
                png = await asyncio.to_thread(encode_png, image)
                try:
                    rt.state = await asyncio.to_thread(self.hub.storage.append_resize, rt.id, png, width, height,
                                                       f"expanded to {width}x{height}")
                except StorageError as exc:
                    raise ClientError(exc.code, exc.message) from None
                rt.image = image
                self.hub.scheduler.cancel_session(rt.id)  # edits of the smaller canvas: their masks no longer fit
                return png

        png = await run_to_end(commit())
        self._send_canvas(msg.id, rt, png)
        await self.hub.prepare(rt)

    async def _move(self, req_id: Optional[str], n: int, *, relative: bool) -> None:
        rt = self._need_session()
        if rt.state is None:
            raise ClientError("no_canvas", "no canvas yet")
        async def commit() -> None:
            async with rt.lock:
                st = rt.state
                target = st.position + n if relative else n
                if not 0 <= target < len(st.history):
                    if relative:
                        raise ClientError("nothing_to_undo", "nothing to undo" if n < 0 else "nothing to redo")
                    raise ClientError("out_of_range", f"history index must be in 0..{len(st.history) - 1}")
                try:
                    rt.state = await asyncio.to_thread(self.hub.storage.move, rt.id, target)
                except StorageError as exc:
                    raise ClientError(exc.code, exc.message) from None
                rt.image = None  # decoded lazily at the next edit

        await run_to_end(commit())
        png = await asyncio.to_thread(self.hub.storage.blobs.get, rt.state.current.image_sha)
        self._send_canvas(req_id, rt, png)
        await self.hub.prepare(rt)
