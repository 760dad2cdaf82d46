"""Sessions belong to the owner key that made them: listing and deleting are scoped to it, and a database
an older version created (no owner column) gains the column on start with its sessions kept, owned by none."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from lazyedit.service.security import owner_digest
from lazyedit.service.storage import Storage, new_session_id
from test_service_helpers import noise_image, png

OLD_SESSIONS_TABLE = ("CREATE TABLE le_sessions (id VARCHAR(32) PRIMARY KEY, client VARCHAR(128), width INTEGER, "
                      "height INTEGER, version INTEGER, position INTEGER, created FLOAT, updated FLOAT)")


def check_owner_upgrade(url: str, image_dir) -> None:
    """Shared by the SQLite test here and the PostgreSQL one (test_postgres.py)."""
    old_sid = new_session_id()
    engine = create_engine(url)
    with engine.begin() as conn:  # the table as versions before owners made it, with one session in it
        conn.execute(text(OLD_SESSIONS_TABLE))
        conn.execute(text("INSERT INTO le_sessions VALUES (:id, 'rest', 16, 16, 1, 0, 1.0, 1.0)"), {"id": old_sid})
    engine.dispose()

    st = Storage(url, image_dir)
    try:
        assert [i.id for i in st.list()] == [old_sid] and st.owner(old_sid) == ""
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


def test_an_older_sqlite_database_gains_owners(tmp_path):
    check_owner_upgrade(f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "images")


def test_owner_digest():
    assert owner_digest(None) == ""
    assert len(owner_digest("k" * 22)) == 64 and owner_digest("k" * 22) != "k" * 22


@pytest.mark.parametrize("bad", ["", "short", "x" * 65, "has space in it here...", "ünicode-ünicode-ünicode"])
def test_a_malformed_owner_key_is_refused(bad):
    with pytest.raises(ValueError, match="owner key must be 22 to 64 characters"):
        owner_digest(bad)
