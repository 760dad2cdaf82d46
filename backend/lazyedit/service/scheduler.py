"""One model worker thread, a fair queue across sessions, supersede / cancel, and batching.

Queue: at most one waiting edit per session (a new edit supersedes the waiting one and takes its place
in line), sessions served in arrival order, a session whose edit was just taken goes to the back when
it submits again: round-robin by session. The worker takes the head edit plus up to ``max_batch - 1``
waiting edits with the same step count and runs them in one ``pipe.edit_batch`` call.

Prepares (``PrepareJob``) fill the model's caches ahead of an edit: the canvas latent when a canvas
arrives, a mask's context (and the decoder's features of the pixels around it) while the prompt is written. They run only when no edit is waiting, one
per session at most (a newer prepare or an edit of the session drops the waiting one), and never delay an
edit by more than the one prepare already running.

Cancellation is cooperative: each edit has an Event that its step callback checks, so a running edit
stops at the next denoising step boundary. Nothing here touches asyncio: ``Job.emit`` is called from
the worker thread (or the submitting thread for a queued edit superseded) and must be thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger("lazyedit.service.edits")


class QueueFull(Exception):
    pass


_serial = itertools.count(1)


@dataclass(eq=False)
class Job:
    session_id: str
    edit_id: Optional[str]
    image: Any                       # PIL RGB canvas snapshot
    canvas_key: str
    mask: np.ndarray
    prompt: str
    steps: int
    guidance: Optional[float] = None
    seed: Optional[int] = None
    sketch: Any = None
    sketch_strength: float = 1.0
    #: emit(kind, payload): kind in progress | result | cancelled | error. Thread-safe.
    emit: Callable[[str, Any], None] = lambda kind, payload: None
    preview_every: int = 1
    serial: int = field(default_factory=lambda: next(_serial))
    cancel_event: threading.Event = field(default_factory=threading.Event)
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float = 0.0
    t_end: float = 0.0
    batch_size: int = 0
    state: str = "new"               # queued | running | done

    def timings(self) -> dict[str, float]:
        return {"queue_ms": round((self.t_start - self.t_submit) * 1000, 2),
                "service_total_ms": round((self.t_end - self.t_submit) * 1000, 2)}


@dataclass(eq=False)
class PrepareJob:
    session_id: str
    image: Any                       # PIL RGB canvas snapshot
    canvas_key: str
    mask: Optional[np.ndarray] = None  # None: the canvas latent only
    #: done(timings): called from the worker thread once the caches are filled. Thread-safe.
    done: Callable[[dict], None] = lambda timings: None


class EditScheduler:
    def __init__(self, pipe: Any, *, max_queue: int = 64, max_batch: int = 8):
        self.pipe = pipe
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: "OrderedDict[str, Job]" = OrderedDict()   # session_id -> waiting job
        self._running: dict[str, Job] = {}                     # session_id -> running job
        self._prepares: "OrderedDict[str, PrepareJob]" = OrderedDict()  # session_id -> waiting prepare
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.batches = 0
        self.batched_jobs = 0
        self.completed = 0
        self.prepared = 0

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._worker, name="lazyedit-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            waiting = list(self._queue.values())
            self._queue.clear()
            self._prepares.clear()
            for job in self._running.values():
                job.cancel_event.set()
            self._cond.notify_all()
        for job in waiting:
            self._finish(job, "cancelled", None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- API used by the service ------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``; supersede the session's waiting and running edits. Raises QueueFull."""
        with self._cond:
            if self._stopping:
                raise QueueFull("server is shutting down")
            old = self._queue.get(job.session_id)
            if old is None and len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} edits are waiting (limit {self.max_queue})")
            running = self._running.get(job.session_id)
            if running is not None:
                running.cancel_event.set()
            self._prepares.pop(job.session_id, None)   # the edit computes what it needs itself
            if old is not None:
                old.state = "done"
                self._queue[job.session_id] = job          # same place in line
            else:
                self._queue[job.session_id] = job
            job.state = "queued"
            job.t_submit = time.perf_counter()
            self._cond.notify()
        if old is not None:
            self._finish(old, "cancelled", None)

    def submit_prepare(self, job: PrepareJob) -> None:
        """Queue ``job`` behind every edit; it replaces the session's waiting prepare. Dropped quietly when the
        queue is full or the server is stopping: a prepare is only a head start."""
        with self._cond:
            if self._stopping or (job.session_id not in self._prepares and len(self._prepares) >= self.max_queue):
                return
            self._prepares.pop(job.session_id, None)
            self._prepares[job.session_id] = job          # to the back: the newest mask is the likeliest edit
            self._cond.notify()

    def cancel(self, session_id: str, edit_id: Optional[str]) -> bool:
        """Cancel this session's edit named ``edit_id`` if it is waiting or running."""
        with self._cond:
            old = self._queue.get(session_id)
            if old is not None and old.edit_id == edit_id:
                del self._queue[session_id]
                old.state = "done"
            else:
                old = None
                running = self._running.get(session_id)
                if running is not None and running.edit_id == edit_id and not running.cancel_event.is_set():
                    running.cancel_event.set()
                    return True
        if old is not None:
            self._finish(old, "cancelled", None)
            return True
        return False

    def cancel_session(self, session_id: str) -> None:
        with self._cond:
            old = self._queue.pop(session_id, None)
            self._prepares.pop(session_id, None)
            running = self._running.get(session_id)
            if running is not None:
                running.cancel_event.set()
        if old is not None:
            old.state = "done"
            self._finish(old, "cancelled", None)

    def busy(self, session_id: str) -> bool:
        with self._cond:
            return session_id in self._queue or session_id in self._running

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._queue), "running": len(self._running), "batches": self.batches,
                    "batched_jobs": self.batched_jobs, "completed": self.completed, "max_batch": self.max_batch,
                    "prepares_queued": len(self._prepares), "prepared": self.prepared}

    # ---- worker -----------------------------------------------------------------------------------
    def _take_batch(self) -> list[Job]:
        head_sid, head = next(iter(self._queue.items()))
        batch = [head]
        del self._queue[head_sid]
        if self.max_batch > 1:
            for sid, job in list(self._queue.items()):
                if len(batch) >= self.max_batch:
                    break
                if job.steps == head.steps and getattr(job.image, "size", None) == getattr(head.image, "size", None):
                    batch.append(job)
                    del self._queue[sid]
        return batch

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._prepares and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                prep = None if self._queue else self._prepares.popitem(last=False)[1]
                batch = self._take_batch() if self._queue else []
                now = time.perf_counter()
                for job in batch:
                    job.state = "running"
                    job.t_start = now
                    job.batch_size = len(batch)
                    self._running[job.session_id] = job
            if prep is not None:
                self._prepare(prep)
                continue
            try:
                self._execute(batch)
            except BaseException:  # never let the worker die
                log.exception("model worker: unexpected failure")
                for job in batch:
                    if job.state != "done":
                        self._finish(job, "error", ("internal", "the edit failed inside the server"))
            finally:
                with self._cond:
                    for job in batch:
                        if self._running.get(job.session_id) is job:
                            del self._running[job.session_id]

    def _prepare(self, job: PrepareJob) -> None:
        try:
            timings = self.pipe.prepare(job.image, job.mask, canvas_key=job.canvas_key)
        except Exception:  # never let the worker die; the edit will compute (and report) the same itself
            log.exception("prepare for session %s failed", job.session_id[:8])
            return
        self.prepared += 1
        job.done(timings)

    def _callback(self, job: Job) -> Callable[[Any], bool]:
        every = max(1, job.preview_every)

        def cb(preview: Any) -> bool:
            if job.cancel_event.is_set():
                return False
            step, total = getattr(preview, "step", 0), getattr(preview, "total", 0)
            if step % every == 0 or step == total:
                job.emit("progress", preview)
            return not job.cancel_event.is_set()

        return cb

    def _kwargs(self, job: Job) -> dict[str, Any]:
        return dict(image=job.image, mask=job.mask, prompt=job.prompt, sketch=job.sketch,
                    sketch_strength=job.sketch_strength, steps=job.steps, guidance=job.guidance, seed=job.seed,
                    canvas_key=job.canvas_key, callback=self._callback(job))

    def _execute(self, batch: list[Job]) -> None:
        from lazyedit.engine import EditCancelled, EditRequest

        live = [j for j in batch if not j.cancel_event.is_set()]
        for job in batch:
            if job.cancel_event.is_set():
                self._finish(job, "cancelled", None)
        if not live:
            return
        if len(live) > 1:
            self.batches += 1
            self.batched_jobs += len(live)
            try:
                outs = self.pipe.edit_batch([EditRequest(**self._kwargs(j)) for j in live])
            except Exception as exc:  # one bad request must not sink the others: run them one by one
                log.warning("edit_batch of %d failed (%s: %s); running them one at a time",
                            len(live), type(exc).__name__, exc)
                outs = None
            if outs is not None:
                for job, out in zip(live, outs):
                    self._settle(job, out, EditCancelled)
                return
        for job in live:
            if job.cancel_event.is_set():
                self._finish(job, "cancelled", None)
                continue
            try:
                out = self.pipe.edit(**self._kwargs(job))
            except Exception as exc:
                out = exc
            self._settle(job, out, EditCancelled)

    def _settle(self, job: Job, out: Any, cancelled_type: type) -> None:
        if isinstance(out, cancelled_type) or job.cancel_event.is_set():
            self._finish(job, "cancelled", None)
        elif isinstance(out, BaseException):
            code = getattr(out, "code", None)
            if isinstance(out, ValueError) and isinstance(code, str):
                self._finish(job, "error", (code, str(getattr(out, "message", None) or out)))
            else:
                log.error("edit %s of session %s failed", job.edit_id, job.session_id,
                          exc_info=(type(out), out, out.__traceback__))
                self._finish(job, "error", ("internal", "the edit failed inside the server"))
        else:
            self._finish(job, "result", out)

    def _finish(self, job: Job, kind: str, payload: Any) -> None:
        job.t_end = time.perf_counter()
        job.state = "done"
        if kind == "result":
            self.completed += 1
            t = job.timings()
            stages = " ".join(f"{k}={v:.1f}" for k, v in (getattr(payload, "timings", None) or {}).items()
                              if k.endswith("_ms") and isinstance(v, (int, float)))
            log.info("edit session=%s id=%s steps=%s batch=%d box=%s seed=%s queue_ms=%.1f service_ms=%.1f %s",
                     job.session_id[:8], job.edit_id, getattr(payload, "steps", job.steps), job.batch_size,
                     list(getattr(payload, "box", ())), getattr(payload, "seed", None), t["queue_ms"],
                     t["service_total_ms"], stages)
        elif kind == "cancelled":
            log.info("edit session=%s id=%s cancelled", job.session_id[:8], job.edit_id)
        try:
            job.emit(kind, payload)
        except Exception:
            log.exception("delivering %s of edit %s failed", kind, job.edit_id)
