"""Un-accepted results in storage: bounded per session, accepted once, their blobs collected with them."""

from __future__ import annotations

import pytest

from lazyedit.service.storage import Storage, StorageError, new_session_id
from test_service_helpers import noise_image, png


def check_stored_results(st: Storage) -> None:
    """Shared by the SQLite test here and the PostgreSQL one (test_postgres.py)."""
    sid = new_session_id()
    base = png(noise_image(16, 16, seed=1))
    state = st.set_canvas(sid, base, 16, 16)
    base_sha = state.current.image_sha
    regions = {f"e{i}": png(noise_image(4, 4, seed=10 + i)) for i in range(6)}
    for i, (edit_id, region) in enumerate(regions.items()):
        assert st.put_result(sid, edit_id, region, (i, 1, i + 4, 5), base_sha, f"prompt {i}\x00", 100 + i, keep=4)
    assert st.result(sid, "e0") is None and st.result(sid, "e1") is None      # only the 4 newest stay
    r = st.result(sid, "e4")
    assert (r.base_sha, r.box, r.prompt, r.seed, r.region) == (base_sha, (4, 1, 8, 5), "prompt 4\ufffd", 104, regions["e4"])
    blob_shas = set(st.blobs.shas())
    assert len(blob_shas) == 1 + 4                                            # base + the kept regions
    assert st.sweep() == 0                                                    # stored results are references

    # accepting removes the result in the same transaction: it cannot be accepted twice
    full = png(noise_image(16, 16, seed=2))
    st.append_edit(sid, full, "prompt 4", 104, result_id="e4")
    assert st.result(sid, "e4") is None and st.result(sid, "e5") is not None
    assert len(set(st.blobs.shas())) == 2 + 3

    # a new canvas restarts the history: results made on the old images go, with their blobs
    st.set_canvas(sid, png(noise_image(16, 16, seed=3)), 16, 16)
    assert st.result(sid, "e5") is None
    assert len(set(st.blobs.shas())) == 1

    # a result of a deleted session is not stored; deleting a session removes its results
    st.put_result(sid, "x", regions["e0"], (0, 0, 4, 4), base_sha, "", 1, keep=4)
    assert st.delete(sid) and not any(st.blobs.shas())
    assert not st.put_result(sid, "y", regions["e1"], (0, 0, 4, 4), base_sha, "", 1, keep=4)
    with pytest.raises(StorageError):
        st.append_edit(sid, full, "gone", 1, result_id="x")


def test_stored_results_on_sqlite(tmp_path):
    st = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "images")
    try:
        check_stored_results(st)
    finally:
        st.close()
