"""Sessions belong to the owner key that made them: listing and deleting are scoped to it, and a database
an older version created (no owner column, no entry sizes) gains the columns on start with its sessions kept,
owned by none, each entry the size of its session."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from lazyedit.service.security import owner_digest
from lazyedit.service.storage import Storage, new_session_id
from test_service_helpers import noise_image, png

OLD_SESSIONS_TABLE = ("CREATE TABLE le_sessions (id VARCHAR(32) PRIMARY KEY, client VARCHAR(128), width INTEGER, "
                      "height INTEGER, version INTEGER, position INTEGER, created FLOAT, updated FLOAT)")
OLD_ENTRIES_TABLE = ("CREATE TABLE le_entries (id {key} PRIMARY KEY, session_id VARCHAR(32), idx INTEGER, prompt TEXT, "
                     "seed BIGINT, image_sha VARCHAR(64), created FLOAT)")


def check_upgrade(url: str, image_dir) -> None:
    """Shared by the SQLite test here and the PostgreSQL one (test_postgres.py)."""
    old_sid = new_session_id()
    engine = create_engine(url)
    with engine.begin() as conn:  # the tables as versions before owners and sizes made them, one session in them
        conn.execute(text(OLD_SESSIONS_TABLE))
        conn.execute(text(OLD_ENTRIES_TABLE.format(key="SERIAL" if url.startswith("postgresql") else "INTEGER")))
        conn.execute(text("INSERT INTO le_sessions VALUES (:id, 'rest', 16, 12, 2, 1, 1.0, 1.0)"), {"id": old_sid})
        for idx in (0, 1):
            conn.execute(text("INSERT INTO le_entries (session_id, idx, prompt, seed, image_sha, created) "
                              "VALUES (:id, :idx, NULL, NULL, :sha, 1.0)"), {"id": old_sid, "idx": idx, "sha": "0" * 64})
    engine.dispose()

    st = Storage(url, image_dir)
    try:
        assert [i.id for i in st.list()] == [old_sid] and st.owner(old_sid) == ""
        # the old entries took their session's size: expanding and undoing it lands on that size again
        expanded = st.append_resize(old_sid, png(noise_image(20, 12)), 20, 12, "expand")
        assert (expanded.width, expanded.height, expanded.position) == (20, 12, 2)
        assert (st.move(old_sid, 0).width, st.get(old_sid).height) == (16, 12)
        mine, theirs = owner_digest("a" * 22), owner_digest("b" * 22)
        sid = new_session_id()
        st.set_canvas(sid, png(noise_image(16, 16, seed=1)), 16, 16, owner=mine)
        assert [i.id for i in st.list(mine)] == [sid] and st.list(theirs) == []
        assert [i.id for i in st.list()] == [old_sid]
        st.set_canvas(sid, png(noise_image(16, 16, seed=2)), 16, 16, owner=theirs)  # a new canvas keeps the owner
        assert st.owner(sid) == mine
    finally:
        st.close()
    Storage(url, image_dir).close()  # a second start finds the column and leaves the table alone


def test_an_older_sqlite_database_gains_owners_and_entry_sizes(tmp_path):
    check_upgrade(f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "images")


def test_owner_digest():
    assert owner_digest(None) == ""
    assert len(owner_digest("k" * 22)) == 64 and owner_digest("k" * 22) != "k" * 22


@pytest.mark.parametrize("bad", ["", "short", "x" * 65, "has space in it here...", "ünicode-ünicode-ünicode"])
def test_a_malformed_owner_key_is_refused(bad):
    with pytest.raises(ValueError, match="owner key must be 22 to 64 characters"):
        owner_digest(bad)
