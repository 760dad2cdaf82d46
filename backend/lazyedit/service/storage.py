"""Durable storage: sessions and history in SQL (SQLAlchemy 2.0, SQLite by default, PostgreSQL works),
images in a content-addressed store (blobs.py: a folder, ``images/ab/<sha256>.png``, or an S3 bucket) written
atomically.

Every method here is synchronous and blocking: the service calls them from worker threads.
A write that must be durable (an accepted edit) is: blob written + fsynced + renamed + folder fsynced,
then the SQL transaction committed. A crash in between leaves at most an unreferenced blob, which the
start-up sweep removes.

Several service replicas may share one PostgreSQL database and one images folder (docs/scaling.md):
writes lock their session row (``SELECT ... FOR UPDATE``), creating a session under the session cap takes
an advisory lock so that two replicas never both take the last place, and a blob is written and referenced, or found
unreferenced and deleted, under a per-blob PostgreSQL advisory lock (shared for writers, exclusive for the
collector), so one replica never deletes a file another replica is about to reference. On SQLite (one
server) both are no-ops and the in-process lock is enough.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from sqlalchemy import (BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        delete, event, func, inspect, select, text)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .blobs import BlobStore, open_blob_store

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")

#: temp files younger than this are left alone by the sweep: another replica may be writing them
TMP_GRACE_S = 600.0
#: first key of the two-int PostgreSQL advisory locks this module takes ("le" + 1: blobs, 2: schema,
#: 3: creating a session under the session cap)
_PG_LOCK_BLOB = 0x6C6501
_PG_LOCK_SCHEMA = 0x6C6502
_PG_LOCK_NEW_SESSION = 0x6C6503


def new_session_id() -> str:
    """128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def valid_session_id(sid: object) -> bool:
    return isinstance(sid, str) and SESSION_ID_RE.fullmatch(sid) is not None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "le_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client: Mapped[str] = mapped_column(String(128), default="")
    # who may list and delete it: the SHA-256 of the owner key of the browser that made it ("" = no owner:
    # made by a tool without a key, or before owners existed); knowing the id is enough to open it
    owner: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=1)
    position: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class EntryRow(Base):
    __tablename__ = "le_entries"
    __table_args__ = (UniqueConstraint("session_id", "idx", name="uq_le_entries_session_idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32), ForeignKey("le_sessions.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    seed: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    image_sha: Mapped[str] = mapped_column(String(64), index=True)
    created: Mapped[float] = mapped_column(Float)
    # each entry's own size: an expanded canvas is a history entry of another size (undo shrinks it back)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class ResultRow(Base):
    """An edit's result not accepted yet: the changed region (a blob) over a base image, so that it can
    still be accepted after a restart or from another replica."""

    __tablename__ = "le_results"
    __table_args__ = (UniqueConstraint("session_id", "edit_id", name="uq_le_results_session_edit"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32), ForeignKey("le_sessions.id", ondelete="CASCADE"), index=True)
    edit_id: Mapped[str] = mapped_column(String(64))
    base_sha: Mapped[str] = mapped_column(String(64))
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    region_sha: Mapped[str] = mapped_column(String(64), index=True)
    created: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class StoredResult:
    edit_id: str
    base_sha: str  # the image the edit was made on: it can only be accepted while that is current
    box: tuple[int, int, int, int]
    prompt: str
    seed: int
    region: bytes  # PNG of the box: the base image with the edit's masked pixels replaced


@dataclass(frozen=True)
class Entry:
    index: int
    prompt: Optional[str]
    seed: Optional[int]
    image_sha: str
    created: float


@dataclass(frozen=True)
class SessionState:
    id: str
    width: int
    height: int
    version: int
    position: int
    created: float
    updated: float
    history: tuple[Entry, ...]

    @property
    def current(self) -> Entry:
        return self.history[self.position]


@dataclass(frozen=True)
class SessionListItem:
    id: str
    width: int
    height: int
    created: float
    updated: float
    edits: int


class StorageError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _normalise_url(url: str) -> str:
    # "postgresql://" means psycopg2 to SQLAlchemy; use psycopg 3 when that is what is installed
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        rest = url.split("://", 1)[1]
        try:
            import psycopg2  # noqa: F401
            return "postgresql://" + rest
        except ImportError:
            try:
                import psycopg  # noqa: F401
                return "postgresql+psycopg://" + rest
            except ImportError:
                return "postgresql://" + rest
    return url


class Storage:
    def __init__(self, database_url: str, images: str | Path | BlobStore):
        url = _normalise_url(database_url)
        kwargs: dict = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record):  # connection settings, not queries
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        self.is_postgres = self.engine.dialect.name == "postgresql"
        with self.engine.begin() as conn:
            if self.is_postgres:  # replicas starting together: one creates the tables, the others wait
                conn.execute(text("SELECT pg_advisory_xact_lock(:a, 0)"), {"a": _PG_LOCK_SCHEMA})
            Base.metadata.create_all(conn)
            self._upgrade_schema(conn)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        # a folder, s3://bucket/prefix, or a store already opened (blobs.py)
        self.blobs = images if isinstance(images, BlobStore) else open_blob_store(images)
        # one writer at a time inside this process (keeps blob GC and inserts from racing)
        self._lock = threading.RLock()

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _upgrade_schema(conn) -> None:
        """Add what later versions added to tables an older version created (create_all adds no columns).
        Three columns so far, so no migration framework."""
        sessions, entries = SessionRow.__tablename__, EntryRow.__tablename__
        if "owner" not in {c["name"] for c in inspect(conn).get_columns(sessions)}:
            conn.execute(text(f"ALTER TABLE {sessions} ADD COLUMN owner VARCHAR(64) NOT NULL DEFAULT ''"))
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{sessions}_owner ON {sessions} (owner)"))
        if "width" not in {c["name"] for c in inspect(conn).get_columns(entries)}:
            # before entries had sizes every entry of a session had the session's size
            for col in ("width", "height"):
                conn.execute(text(f"ALTER TABLE {entries} ADD COLUMN {col} INTEGER"))
                conn.execute(text(f"UPDATE {entries} SET {col} = (SELECT {col} FROM {sessions} "
                                  f"WHERE {sessions}.id = {entries}.session_id)"))

    # ---- cross-replica locks (PostgreSQL; no-ops elsewhere) ------------------------------------
    @staticmethod
    def _blob_key(sha: str) -> int:
        return int(sha[:8], 16) - (1 << 31)   # signed int4; a collision only serialises two blobs

    def _lock_blobs(self, db: Session, shas, exclusive: bool) -> None:
        """Transaction-scoped advisory locks on blobs, taken in key order (no deadlock between collectors)."""
        if not self.is_postgres:
            return
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        for key in sorted({self._blob_key(s) for s in shas}):
            db.execute(text(f"SELECT {fn}(:a, :b)"), {"a": _PG_LOCK_BLOB, "b": key})

    def _put_locked(self, db: Session, png: bytes) -> str:
        """Write the blob inside ``db``'s transaction, holding its shared lock until commit: a collector on
        another replica waits for the commit and then sees the new reference."""
        sha = hashlib.sha256(png).hexdigest()
        self._lock_blobs(db, [sha], exclusive=False)
        put = self.blobs.put(png)
        assert put == sha
        return sha

    @staticmethod
    def _text(value: Optional[str]) -> Optional[str]:
        # PostgreSQL text cannot hold NUL; the prompt is only shown back, so keep a visible stand-in
        return value.replace("\x00", "\ufffd") if value is not None else None

    # ---- reads ---------------------------------------------------------------------------------
    def _state(self, db: Session, sid: str) -> Optional[SessionState]:
        row = db.get(SessionRow, sid)
        if row is None:
            return None
        entries = db.scalars(select(EntryRow).where(EntryRow.session_id == sid).order_by(EntryRow.idx)).all()
        hist = tuple(Entry(e.idx, e.prompt, e.seed, e.image_sha, e.created) for e in entries)
        return SessionState(row.id, row.width, row.height, row.version, row.position, row.created, row.updated, hist)

    def get(self, sid: str) -> Optional[SessionState]:
        if not valid_session_id(sid):
            return None
        with self._session() as db:
            return self._state(db, sid)

    def list(self, owner: str = "") -> list[SessionListItem]:
        """The sessions of ``owner`` (an owner digest; "" lists those without one), newest first."""
        with self._session() as db:
            mine = select(SessionRow.id).where(SessionRow.owner == owner)
            counts = dict(db.execute(select(EntryRow.session_id, func.count(EntryRow.id))
                                     .where(EntryRow.session_id.in_(mine)).group_by(EntryRow.session_id)).all())
            rows = db.scalars(select(SessionRow).where(SessionRow.owner == owner)
                              .order_by(SessionRow.updated.desc())).all()
            return [SessionListItem(r.id, r.width, r.height, r.created, r.updated, max(0, counts.get(r.id, 1) - 1))
                    for r in rows]

    def owner(self, sid: str) -> Optional[str]:
        """The session's owner digest ("" for none), or None when there is no such session."""
        if not valid_session_id(sid):
            return None
        with self._session() as db:
            return db.scalar(select(SessionRow.owner).where(SessionRow.id == sid))

    def count(self) -> int:
        with self._session() as db:
            return db.scalar(select(func.count(SessionRow.id))) or 0

    def image(self, sid: str, index: Optional[int] = None) -> Optional[bytes]:
        state = self.get(sid)
        if state is None:
            return None
        if index is None:
            index = state.position
        if not 0 <= index < len(state.history):
            return None
        return self.blobs.get(state.history[index].image_sha)

    # ---- writes --------------------------------------------------------------------------------
    def set_canvas(self, sid: str, png: bytes, width: int, height: int, client: str = "",
                   max_sessions: Optional[int] = None, owner: str = "") -> SessionState:
        """Create the session (owned by ``owner``, a digest) or restart its history from this canvas (its owner
        stays)."""
        with self._lock:
            now = time.time()
            with self._session() as db, db.begin():
                row = db.get(SessionRow, sid, with_for_update=True)
                old: set[str] = set()
                if row is None:
                    if max_sessions is not None and self.is_postgres:
                        # replicas count and insert one at a time, or two of them could both take the last place
                        db.execute(text("SELECT pg_advisory_xact_lock(:a, 0)"), {"a": _PG_LOCK_NEW_SESSION})
                    if max_sessions is not None and (db.scalar(select(func.count(SessionRow.id))) or 0) >= max_sessions:
                        raise StorageError("too_many_sessions", f"the server keeps at most {max_sessions} sessions")
                    row = SessionRow(id=sid, client=client[:128], owner=owner, width=width, height=height, version=1, position=0,
                                     created=now, updated=now)
                    db.add(row)
                else:
                    old = set(db.scalars(select(EntryRow.image_sha).where(EntryRow.session_id == sid)).all())
                    old |= self._drop_results(db, sid)  # made on the old history's images
                    db.execute(delete(EntryRow).where(EntryRow.session_id == sid))
                    row.width, row.height, row.position, row.updated = width, height, 0, now
                    row.version += 1
                db.flush()
                sha = self._put_locked(db, png)
                db.add(EntryRow(session_id=sid, idx=0, prompt=None, seed=None, image_sha=sha, created=now,
                                width=width, height=height))
            self._gc(old - {sha})
            return self.get(sid)  # type: ignore[return-value]

    def append_edit(self, sid: str, png: bytes, prompt: str, seed: int, result_id: Optional[str] = None) -> SessionState:
        """Store an accepted edit after the current position (dropping the redo branch); durable on return.
        ``result_id``: the stored result this accepts, removed in the same transaction (accepted once only)."""
        return self._append(sid, png, prompt, seed, None, result_id)

    def append_resize(self, sid: str, png: bytes, width: int, height: int, label: str) -> SessionState:
        """Store a canvas of another size (an expanded one) as the next history entry, ``label`` shown as its
        prompt; undo goes back to the previous size."""
        return self._append(sid, png, label, None, (width, height), None)

    def _append(self, sid: str, png: bytes, prompt: str, seed: Optional[int], size: Optional[tuple[int, int]],
                result_id: Optional[str]) -> SessionState:
        with self._lock:
            now = time.time()
            with self._session() as db, db.begin():
                row = db.get(SessionRow, sid, with_for_update=True)
                if row is None:
                    raise StorageError("unknown_session", "session was deleted")
                width, height = size or (row.width, row.height)
                dropped = set(db.scalars(select(EntryRow.image_sha).where(
                    EntryRow.session_id == sid, EntryRow.idx > row.position)).all())
                if result_id is not None:
                    dropped |= self._drop_results(db, sid, ResultRow.edit_id == result_id)
                db.execute(delete(EntryRow).where(EntryRow.session_id == sid, EntryRow.idx > row.position))
                db.flush()
                sha = self._put_locked(db, png)
                db.add(EntryRow(session_id=sid, idx=row.position + 1, prompt=self._text(prompt), seed=seed,
                                image_sha=sha, created=now, width=width, height=height))
                row.width, row.height = width, height
                row.position += 1
                row.version += 1
                row.updated = now
            self._gc(dropped - {sha})
            return self.get(sid)  # type: ignore[return-value]

    def move(self, sid: str, position: int) -> SessionState:
        with self._lock:
            with self._session() as db, db.begin():
                row = db.get(SessionRow, sid, with_for_update=True)
                if row is None:
                    raise StorageError("unknown_session", "session was deleted")
                n = db.scalar(select(func.count(EntryRow.id)).where(EntryRow.session_id == sid)) or 0
                if not 0 <= position < n:
                    raise StorageError("out_of_range", f"history index {position} outside 0..{n - 1}")
                target = db.scalars(select(EntryRow).where(EntryRow.session_id == sid, EntryRow.idx == position)).one()
                row.width, row.height = target.width, target.height  # the session's size is its current image's
                row.position = position
                row.version += 1
                row.updated = time.time()
            return self.get(sid)  # type: ignore[return-value]

    def delete(self, sid: str) -> bool:
        if not valid_session_id(sid):
            return False
        with self._lock:
            with self._session() as db, db.begin():
                row = db.get(SessionRow, sid, with_for_update=True)
                if row is None:
                    return False
                shas = set(db.scalars(select(EntryRow.image_sha).where(EntryRow.session_id == sid)).all())
                shas |= self._drop_results(db, sid)
                db.execute(delete(EntryRow).where(EntryRow.session_id == sid))
                db.delete(row)
            self._gc(shas)
            return True

    # ---- un-accepted results ------------------------------------------------------------------
    def put_result(self, sid: str, edit_id: str, region_png: bytes, box: tuple[int, int, int, int], base_sha: str,
                   prompt: str, seed: int, keep: int) -> bool:
        """Keep an edit's result until it is accepted; the session keeps its ``keep`` newest. False when the
        session no longer exists."""
        with self._lock:
            with self._session() as db, db.begin():
                if db.get(SessionRow, sid, with_for_update=True) is None:
                    return False
                dropped = self._drop_results(db, sid, ResultRow.edit_id == edit_id)  # an id used again
                sha = self._put_locked(db, region_png)
                x0, y0, x1, y1 = (int(v) for v in box)
                db.add(ResultRow(session_id=sid, edit_id=edit_id, base_sha=base_sha, x0=x0, y0=y0, x1=x1, y1=y1,
                                 prompt=self._text(prompt), seed=int(seed), region_sha=sha, created=time.time()))
                db.flush()
                newest = select(ResultRow.id).where(ResultRow.session_id == sid).order_by(ResultRow.id.desc()).limit(keep)
                dropped |= self._drop_results(db, sid, ResultRow.id.not_in(newest.scalar_subquery()))
            self._gc(dropped - {sha})
            return True

    def result(self, sid: str, edit_id: str) -> Optional[StoredResult]:
        if not valid_session_id(sid):
            return None
        with self._session() as db:
            r = db.scalars(select(ResultRow).where(ResultRow.session_id == sid, ResultRow.edit_id == edit_id)).first()
            if r is None:
                return None
            return StoredResult(r.edit_id, r.base_sha, (r.x0, r.y0, r.x1, r.y1), r.prompt or "", r.seed,
                                self.blobs.get(r.region_sha))

    @staticmethod
    def _drop_results(db: Session, sid: str, *where) -> set[str]:
        """Delete the session's stored results matching ``where`` (all without); returns their blobs."""
        rows = db.scalars(select(ResultRow).where(ResultRow.session_id == sid, *where)).all()
        for r in rows:
            db.delete(r)
        db.flush()
        return {r.region_sha for r in rows}

    def _gc(self, shas: set[str]) -> int:
        """Delete the blobs among ``shas`` that no entry or stored result references; returns how many were
        deleted."""
        if not shas:
            return 0
        removed = 0
        with self._session() as db, db.begin():
            self._lock_blobs(db, shas, exclusive=True)   # waits for writers of these blobs to commit
            used = set(db.scalars(select(EntryRow.image_sha).where(EntryRow.image_sha.in_(shas))).all())
            used |= set(db.scalars(select(ResultRow.region_sha).where(ResultRow.region_sha.in_(shas))).all())
            for sha in shas - used:
                if self.blobs.exists(sha):
                    self.blobs.delete(sha)
                    removed += 1
        return removed

    def sweep(self) -> int:
        """Remove stale temp files and blobs that nothing references (start-up, after a crash).

        Safe while other replicas write to the same folder: temp files younger than ``TMP_GRACE_S`` are
        kept (one may be half written), and each candidate blob is re-checked under its exclusive lock."""
        with self._lock:
            with self._session() as db:
                used = set(db.scalars(select(EntryRow.image_sha).distinct()).all())
                used |= set(db.scalars(select(ResultRow.region_sha).distinct()).all())
            removed = self.blobs.remove_partials(TMP_GRACE_S)
            candidates = {sha for sha in self.blobs.shas() if sha not in used}
            batch = sorted(candidates)
            for i in range(0, len(batch), 256):   # bounded transactions and lock counts
                removed += self._gc(set(batch[i:i + 256]))
            return removed
