"""The model worker's queue with the real tiny pipeline: round-robin order, batching, supersede."""

from __future__ import annotations

import threading
import time


from lazyedit.service.scheduler import EditScheduler, Job, PrepareJob
from test_service_helpers import box_mask, noise_image


def _job(sid: str, eid: str, events: list, steps: int = 1, started: threading.Event | None = None,
         gate: threading.Event | None = None) -> Job:
    def emit(kind, payload):
        if kind == "progress":
            if started is not None:
                started.set()
            if gate is not None:  # hold the worker inside the step loop until the test has queued its jobs
                gate.wait(30)
        else:
            events.append((kind, sid, eid))
    return Job(session_id=sid, edit_id=eid, image=noise_image(32, 32), canvas_key=f"k{sid}",
               mask=box_mask(32, 32, (8, 8, 24, 24)), prompt="p", steps=steps, emit=emit)


def test_round_robin_batching_and_supersede(tiny_pipeline):
    events: list = []
    sched = EditScheduler(tiny_pipeline, max_queue=16, max_batch=3)
    started, gate = threading.Event(), threading.Event()
    sched.start()
    try:
        sched.submit(_job("A", "a0", events, steps=30, started=started, gate=gate))  # occupies the worker
        assert started.wait(30)
        for sid in "BCDE":
            sched.submit(_job(sid, f"{sid.lower()}1", events))
        sched.submit(_job("B", "b2", events))      # supersedes b1, keeps B's place in line
        sched.cancel("A", "a0")
        gate.set()
        deadline = time.time() + 60
        while len([e for e in events if e[0] == "result"]) < 4 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sched.stop()
    assert ("cancelled", "B", "b1") in events and ("cancelled", "A", "a0") in events
    results = [e[2] for e in events if e[0] == "result"]
    assert results == ["b2", "c1", "d1", "e1"]          # arrival order of sessions
    assert sched.batches == 1 and sched.batched_jobs == 3  # b2, c1, d1 packed in one pass; e1 alone


def test_prepares_wait_behind_edits_and_an_edit_drops_its_sessions_prepare(tiny_pipeline):
    events: list = []
    sched = EditScheduler(tiny_pipeline, max_queue=16, max_batch=1)
    started, gate = threading.Event(), threading.Event()

    def prepare(sid: str, box) -> PrepareJob:
        return PrepareJob(session_id=sid, image=noise_image(32, 32), canvas_key=f"k{sid}", mask=box_mask(32, 32, box),
                          done=lambda timings: events.append(("prepared", sid, timings["context_ms"] > 0)))

    sched.start()
    try:
        sched.submit(_job("A", "a0", events, steps=30, started=started, gate=gate))  # occupies the worker
        assert started.wait(30)
        sched.submit_prepare(prepare("B", (0, 0, 8, 8)))
        sched.submit_prepare(prepare("B", (8, 8, 16, 16)))  # replaces B's waiting prepare
        sched.submit_prepare(prepare("C", (0, 0, 8, 8)))
        sched.submit(_job("C", "c1", events))              # C's edit makes C's prepare pointless
        sched.submit(_job("D", "d1", events))
        assert sched.stats()["prepares_queued"] == 1
        gate.set()
        deadline = time.time() + 60
        while len(events) < 4 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sched.stop()
    assert events == [("result", "A", "a0"), ("result", "C", "c1"), ("result", "D", "d1"), ("prepared", "B", True)]
    assert sched.stats()["prepared"] == 1
