"""Images in an S3-compatible bucket (``--image-store s3://bucket/prefix``), against a real S3 server on loopback
(conftest.py ``s3_endpoint``: moto's server). Skipped, saying why, where moto or boto3 is not installed."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

boto3 = pytest.importorskip("boto3", reason="the S3 image store needs boto3 (pip install -e 'backend[test]')")

from lazyedit.service.blobs import S3Blobs  # noqa: E402
from lazyedit.service.storage import Storage, new_session_id  # noqa: E402
from test_postgres import check_shared_blob_survives_collection, pg_server, pg_url  # noqa: E402, F401 (fixtures)
from test_service_helpers import WS, box_mask, decode_png, noise_image, png, s3_environment, service  # noqa: E402
from test_storage_results import check_stored_results  # noqa: E402


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket on the local server; boto3 reaches it through the same settings a deployment sets."""
    for name, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"le-{secrets.token_hex(6)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _keys(bucket: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_history_and_collection_in_a_bucket(tmp_path, bucket):
    st = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}", f"s3://{bucket}/images")
    sid = new_session_id()
    base, edit1, edit2 = (png(noise_image(16, 16, seed=s)) for s in (1, 2, 3))
    state = st.set_canvas(sid, base, 16, 16)
    st.append_edit(sid, edit1, "a red star", 7)
    sha = state.current.image_sha
    assert f"images/{sha[:2]}/{sha}.png" in _keys(bucket)
    assert st.image(sid, 0) == base and st.image(sid) == edit1

    # an edit made after undo drops the redo branch, and its image leaves the bucket
    st.move(sid, 0)
    st.append_edit(sid, edit2, "a blue ring", 8)
    assert len(_keys(bucket)) == 2 and st.image(sid) == edit2
    assert st.delete(sid) and _keys(bucket) == []
    with pytest.raises(FileNotFoundError):
        st.blobs.get(sha)
    st.close()


def test_stored_results_in_a_bucket(tmp_path, bucket):
    check_stored_results(Storage(f"sqlite:///{tmp_path / 'db.sqlite'}", f"s3://{bucket}"))


def test_sweep_removes_only_unreferenced_objects(tmp_path, bucket):
    st = Storage(f"sqlite:///{tmp_path / 'db.sqlite'}", f"s3://{bucket}/p")
    kept = st.set_canvas(new_session_id(), png(noise_image(16, 16, seed=1)), 16, 16).current.image_sha
    orphan = st.blobs.put(png(noise_image(16, 16, seed=2)))   # a crash between the upload and the commit
    boto3.client("s3").put_object(Bucket=bucket, Key="p/notes.txt", Body=b"not ours")
    assert st.sweep() == 1
    assert _keys(bucket) == sorted([f"p/{kept[:2]}/{kept}.png", "p/notes.txt"]) and not st.blobs.exists(orphan)


def test_two_replicas_share_the_bucket(tmp_path, bucket):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    a, b = Storage(url, f"s3://{bucket}/shared"), Storage(url, f"s3://{bucket}/shared")
    sid = new_session_id()
    image = png(noise_image(24, 16, seed=5))
    a.set_canvas(sid, image, 24, 16)
    assert b.image(sid) == image


def test_replicas_on_postgresql_never_collect_an_object_another_one_references(bucket, pg_url):
    check_shared_blob_survives_collection(pg_url, f"s3://{bucket}/race")


@pytest.mark.parametrize("location, why", [("s3://", "s3://<bucket>"), ("s3://no-such-bucket/x", "'no-such-bucket'")])
def test_a_bad_store_is_named_at_start(tmp_path, bucket, location, why):
    with pytest.raises(ValueError, match=why):
        Storage(f"sqlite:///{tmp_path / 'db.sqlite'}", location)
    with pytest.raises(ValueError, match="s3://"):
        S3Blobs(location)


def test_serve_stops_at_start_naming_a_missing_bucket(tmp_path, bucket, capsys):
    from lazyedit.service.cli import serve_main

    argv = ["--model", "tiny", "--data-dir", str(tmp_path / "data"), "--port", "0", "--image-store", "s3://le-missing/x"]
    assert serve_main(argv) == 2
    assert "bucket 'le-missing' cannot be reached" in capsys.readouterr().err


def test_service_keeps_accepted_edits_in_the_bucket_across_a_restart(tmp_path, bucket, tiny_pipeline):
    """The real app on a bucket: an accepted edit's image is in the bucket, and a second server on the same
    database and bucket (a restart, or another replica) gives the session back pixel for pixel."""
    store = f"s3://{bucket}/sessions"
    im = noise_image(64, 48)
    mask = box_mask(64, 48, (16, 12, 40, 36))
    with service(tmp_path / "data", tiny_pipeline, image_store=store) as client:
        with client.websocket_connect("/ws") as raw:
            ws = WS(raw)
            sid = ws.hello()["session"]
            edited = np.asarray(ws.accepted_edit(im, mask, "e1", steps=2, seed=3))
    assert len(_keys(bucket)) >= 2 and all(k.startswith("sessions/") for k in _keys(bucket))
    assert not (tmp_path / "data" / "images").exists()   # nothing went to the local folder

    with service(tmp_path / "data", tiny_pipeline, image_store=store) as client:
        with client.websocket_connect(f"/ws?session={sid}") as raw:
            ws = WS(raw)
            assert ws.hello(session=sid)["session"] == sid
            header, parts = ws.recv()
            assert header["type"] == "canvas" and header["position"] == 1
            restored = np.asarray(decode_png(parts["image"]).convert("RGB"))
    assert np.array_equal(restored, edited)
    assert np.array_equal(restored[~mask], np.asarray(im)[~mask])
