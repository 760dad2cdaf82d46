"""Storage and the WebSocket service against a real PostgreSQL server started by this test run.

The server is Debian's ``postgresql`` package (scripts/setup.sh step 4 installs it): ``initdb`` into a
temporary folder, ``pg_ctl start`` on a free loopback port with its unix socket in that folder, run as
the ``postgres`` user when the tests run as root (postgres refuses root). Skipped, saying why, where the
server binaries or psycopg are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from test_service_helpers import WS, box_mask, decode_png, noise_image, paste, png, service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


class PgServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<port>, trust auth, fsync off (tests only)."""

    def __init__(self):
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql "
                        "package (scripts/setup.sh step 4) to run the PostgreSQL tests")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
        self.user = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run the server as")
        self.dir = Path(tempfile.mkdtemp(prefix="lazyedit-pg-"))
        if self.user:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()
        self.data = self.dir / "data"
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "lazyedit", "-E", "UTF8",
                   "--no-sync", "--locale=C"])
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -F -c max_connections=100"
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts, "-w", "-t", "60",
                   "start"])
        self.admin_url = f"postgresql://lazyedit@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = self.dir / "log"
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr or res.stdout}"
                               + (log.read_text() if log.exists() else ""))

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=lazyedit dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://lazyedit@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server():
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    return pg_server.new_database()


def _png_bytes(seed: int, size=(16, 16)) -> bytes:
    return png(noise_image(*size, seed=seed))


# ---- storage level -----------------------------------------------------------------------------

def test_storage_round_trip_on_postgres(tmp_path, pg_url):
    from lazyedit.service.storage import Storage, StorageError, new_session_id

    st = Storage(pg_url, tmp_path / "images")
    try:
        assert st.is_postgres and st.engine.dialect.name == "postgresql"
        sid = new_session_id()
        a, b, c = _png_bytes(1), _png_bytes(2), _png_bytes(3)
        s0 = st.set_canvas(sid, a, 16, 16, client="127.0.0.1")
        assert (s0.version, s0.position, len(s0.history)) == (1, 0, 1)
        big_seed = 2 ** 63 - 1                                   # the protocol's largest seed: BIGINT
        s1 = st.append_edit(sid, b, "un ciel \u00e9toil\u00e9 \U0001F31F\x00end", big_seed)
        assert s1.history[1].seed == big_seed and s1.position == 1 and s1.version == 2
        assert s1.history[1].prompt == "un ciel \u00e9toil\u00e9 \U0001F31F\ufffdend"   # NUL kept visible
        assert abs(s1.history[1].created - time.time()) < 60   # double precision epoch seconds
        s2 = st.move(sid, 0)
        assert s2.position == 0 and st.image(sid) == a
        s3 = st.append_edit(sid, c, "other branch", 5)          # drops the redo branch (b)
        assert [e.prompt for e in s3.history] == [None, "other branch"]
        assert not st.blobs.path(s1.history[1].image_sha).exists()
        with pytest.raises(StorageError) as exc:
            st.move(sid, 7)
        assert exc.value.code == "out_of_range"
        items = st.list()
        assert [(i.id, i.edits) for i in items] == [(sid, 1)] and st.count() == 1
        with pytest.raises(StorageError) as exc:
            st.set_canvas(new_session_id(), a, 16, 16, max_sessions=1)
        assert exc.value.code == "too_many_sessions"
        assert st.delete(sid) and st.get(sid) is None and st.count() == 0
        assert not any(st.blobs.shas())
        with pytest.raises(StorageError):
            st.append_edit(sid, b, "gone", 1)
    finally:
        st.close()


def test_stored_results_on_postgres(tmp_path, pg_url):
    from lazyedit.service.storage import Storage
    from test_storage_results import check_stored_results

    st = Storage(pg_url, tmp_path / "images")
    try:
        check_stored_results(st)
    finally:
        st.close()


def test_an_older_database_gains_owners_and_entry_sizes_on_postgres(tmp_path, pg_url):
    from test_storage_owners import check_upgrade

    check_upgrade(pg_url, tmp_path / "images")


def test_replicas_start_together_on_an_empty_database(tmp_path, pg_url):
    """Two replicas creating the schema at the same moment: one creates it, the other waits."""
    from lazyedit.service.storage import Storage

    out, errors = [], []

    def make():
        try:
            out.append(Storage(pg_url, tmp_path / "images"))
        except Exception as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in out:
        s.close()
    assert not errors and len(out) == 3


def test_two_instances_write_one_session_concurrently(tmp_path, pg_url):
    """Two storage instances (two app replicas) accepting edits into one session at once: the row lock
    serialises them: no lost update, no duplicate history index, every accepted edit kept."""
    from lazyedit.service.storage import Storage, new_session_id

    a, b = Storage(pg_url, tmp_path / "images"), Storage(pg_url, tmp_path / "images")
    try:
        sid = new_session_id()
        a.set_canvas(sid, _png_bytes(0), 16, 16)
        n, errors = 12, []

        def writer(st, base):
            try:
                for i in range(n):
                    st.append_edit(sid, _png_bytes(base + i), f"p{base + i}", base + i)
            except Exception as exc:
                errors.append(exc)

        ts = [threading.Thread(target=writer, args=(a, 100)), threading.Thread(target=writer, args=(b, 200))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        state = b.get(sid)
        assert [e.index for e in state.history] == list(range(2 * n + 1))
        assert state.position == 2 * n and state.version == 2 * n + 1
        assert sorted(e.seed for e in state.history[1:]) == sorted(list(range(100, 100 + n)) + list(range(200, 200 + n)))
        for e in state.history:
            assert a.blobs.path(e.image_sha).is_file()
    finally:
        a.close()
        b.close()


def check_shared_blob_survives_collection(pg_url: str, images) -> None:
    """Replica 2 is storing a new reference to image X (blob already there, transaction not committed)
    while replica 1 drops the last committed reference to X and collects it. Without the per-blob lock
    replica 1 deletes X and replica 2 commits a reference to a missing blob; with it, replica 1's
    collector waits for replica 2's commit and then keeps X. Shared with the bucket test (test_s3_store.py)."""
    from lazyedit.service.storage import Storage, new_session_id

    r1, r2 = Storage(pg_url, images), Storage(pg_url, images)
    try:
        x, y = _png_bytes(42), _png_bytes(43)
        s1, s2 = new_session_id(), new_session_id()
        x_sha = r1.set_canvas(s1, x, 16, 16).current.image_sha
        in_put, collected = threading.Event(), threading.Event()
        orig_put = r2.blobs.put

        def slow_put(data: bytes) -> str:
            sha = orig_put(data)
            in_put.set()
            collected.wait(1.5)      # with the lock, the collector cannot finish before we commit
            return sha

        r2.blobs.put = slow_put
        errors = []

        def writer():
            try:
                r2.set_canvas(s2, x, 16, 16)
            except Exception as exc:
                errors.append(exc)

        t = threading.Thread(target=writer)
        t.start()
        assert in_put.wait(30)
        r1.set_canvas(s1, y, 16, 16)     # drops s1's reference to X and collects X if unreferenced
        collected.set()
        t.join()
        assert not errors, errors
        assert r2.get(s2).current.image_sha == x_sha
        assert r1.blobs.exists(x_sha), "a blob referenced by another replica's session was deleted"
    finally:
        r1.close()
        r2.close()


def test_shared_blob_is_never_collected_while_another_replica_references_it(tmp_path, pg_url):
    check_shared_blob_survives_collection(pg_url, tmp_path / "images")


def test_two_replicas_never_both_take_the_last_place_under_the_session_cap(tmp_path, pg_url):
    """Replica 1 has counted the sessions and inserted its new one (not committed: its blob write is slow)
    when replica 2 creates another. Without a lock both count one session below the cap and both commit."""
    from lazyedit.service.storage import Storage, StorageError, new_session_id

    r1, r2 = Storage(pg_url, tmp_path / "images"), Storage(pg_url, tmp_path / "images")
    try:
        in_put, second_done = threading.Event(), threading.Event()
        orig_put = r1.blobs.put

        def slow_put(data: bytes) -> str:
            in_put.set()
            second_done.wait(1.5)    # with the lock, replica 2 cannot finish before we commit
            return orig_put(data)

        r1.blobs.put = slow_put
        outcomes = {}

        def create(name, st, seed):
            try:
                st.set_canvas(new_session_id(), _png_bytes(seed), 16, 16, max_sessions=1)
                outcomes[name] = "created"
            except StorageError as exc:
                outcomes[name] = exc.code

        t = threading.Thread(target=create, args=("r1", r1, 1))
        t.start()
        assert in_put.wait(30)
        create("r2", r2, 2)
        second_done.set()
        t.join()
        assert outcomes == {"r1": "created", "r2": "too_many_sessions"}
        assert r1.count() == 1
    finally:
        r1.close()
        r2.close()


def test_sweep_spares_fresh_temp_files_and_referenced_blobs(tmp_path, pg_url):
    from lazyedit.service.storage import TMP_GRACE_S, Storage, new_session_id

    st = Storage(pg_url, tmp_path / "images")
    try:
        sid = new_session_id()
        kept = st.set_canvas(sid, _png_bytes(1), 16, 16).current.image_sha
        orphan = st.blobs.put(_png_bytes(2))
        sub = st.blobs.root / "ab"
        sub.mkdir(exist_ok=True)
        fresh, stale = sub / ".tmp-fresh", sub / ".tmp-stale"
        fresh.write_bytes(b"being written by another replica")
        stale.write_bytes(b"left by a crash")
        old = time.time() - TMP_GRACE_S - 60
        os.utime(stale, (old, old))
        assert st.sweep() == 2
        assert fresh.exists() and not stale.exists()
        assert st.blobs.path(kept).is_file() and not st.blobs.path(orphan).exists()
    finally:
        st.close()


# ---- the service: edit -> accept -> restart -> resume -------------------------------------------

def test_websocket_round_trip_and_resume_after_restart_on_postgres(tmp_path, pg_url, tiny_pipeline):
    data = tmp_path / "data"
    im = noise_image(64, 48)
    mask = box_mask(64, 48, (16, 8, 40, 32))
    with service(data, tiny_pipeline, database_url=pg_url) as client:
        with client.websocket_connect("/ws") as raw:
            ws = WS(raw)
            sid = ws.hello()["session"]
            ws.canvas(im)
            _, result, region = ws.edit_result(mask, "e1", steps=2, seed=11, prompt="a blue door")
            ws.send({"type": "accept", "id": "a1", "target": "e1"})
            ack, _ = ws.recv()
            assert ack["type"] == "ack" and ack["of"] == "accept" and ack["position"] == 1
    edited = np.asarray(paste(im, region.convert("RGB"), result["box"]))
    assert not (data / "lazyedit.db").exists()                   # the sessions went to PostgreSQL

    with service(data, tiny_pipeline, database_url=pg_url) as client:   # a restarted server
        with client.websocket_connect("/ws") as raw:
            ws = WS(raw)
            ready = ws.hello(session=sid)
            assert ready["session"] == sid and ready["position"] == 1
            assert [(h["index"], h["prompt"], h["seed"]) for h in ready["history"]] == \
                [(0, None, None), (1, "a blue door", 11)]
            h, parts = ws.recv()
            assert h["type"] == "canvas" and h["position"] == 1
            assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), edited)
            ws.send({"type": "undo", "id": "u"})
            h, parts = ws.recv()
            assert h["type"] == "canvas" and h["position"] == 0
            assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), np.asarray(im))
        r = client.get(f"/api/sessions/{sid}")
        assert r.status_code == 200 and r.json()["position"] == 0
        r = client.get(f"/api/sessions/{sid}/history/1/image")
        assert r.status_code == 200
        assert np.array_equal(np.asarray(decode_png(r.content).convert("RGB")), edited)
        assert client.delete(f"/api/sessions/{sid}").status_code == 204
        assert client.get(f"/api/sessions/{sid}").status_code == 404
