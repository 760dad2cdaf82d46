"""Where the images of sessions live: content-addressed PNGs named by their sha256, in a folder
(``<data-dir>/images/ab/<sha256>.png``, the default) or in an S3-compatible bucket (``s3://bucket/prefix``).

Both stores are written whole or not at all (a folder by temp file + rename, a bucket by ``put_object``), so a
reader never sees half an image, and both are safe to share between replicas: the SQL side (storage.py) decides
what is referenced and when a blob may go.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_sha(sha: str) -> str:
    if not SHA_RE.fullmatch(sha):
        raise ValueError("not a sha256 hex digest")
    return sha


class BlobStore:
    """Content-addressed PNG store; names come only from hex digests. ``get`` of a missing blob raises
    FileNotFoundError, ``delete`` of one does nothing."""

    location: str

    def put(self, data: bytes) -> str:
        raise NotImplementedError

    def get(self, sha: str) -> bytes:
        raise NotImplementedError

    def delete(self, sha: str) -> None:
        raise NotImplementedError

    def exists(self, sha: str) -> bool:
        raise NotImplementedError

    def shas(self) -> Iterator[str]:
        """Every stored blob's digest."""
        raise NotImplementedError

    def remove_partials(self, older_than_s: float) -> int:
        """Remove writes left unfinished by a crash, older than ``older_than_s`` (younger ones may be another
        replica's write in progress); returns how many."""
        raise NotImplementedError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FolderBlobs(BlobStore):
    """``root/ab/<sha256>.png``, each written to a temp file, fsynced, renamed over its name, folder fsynced."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.location = str(self.root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{_check_sha(sha)}.png"

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if dest.exists() and dest.stat().st_size == len(data):
            return sha
        dest.parent.mkdir(exist_ok=True)
        tmp = dest.parent / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return sha

    def get(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()

    def delete(self, sha: str) -> None:
        try:
            self.path(sha).unlink()
        except FileNotFoundError:
            pass

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def _files(self) -> Iterator[Path]:
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                yield from sub.iterdir()

    def shas(self) -> Iterator[str]:
        for f in self._files():
            if f.suffix == ".png" and SHA_RE.fullmatch(f.stem):
                yield f.stem

    def remove_partials(self, older_than_s: float) -> int:
        removed, now = 0, time.time()
        for f in list(self._files()):
            if not f.name.startswith(".tmp-"):
                continue
            try:
                if now - f.stat().st_mtime > older_than_s:
                    f.unlink()
                    removed += 1
            except FileNotFoundError:
                pass   # another replica finished or removed it
        return removed


class S3Blobs(BlobStore):
    """``s3://bucket/prefix`` holding ``<prefix>/ab/<sha256>.png`` objects, through boto3. The endpoint and the
    credentials come from boto3's usual settings (``AWS_ENDPOINT_URL`` for MinIO, Ceph or R2,
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, or a profile)."""

    def __init__(self, url: str, client=None):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"image store {url!r}: an S3 location is s3://<bucket>[/<prefix>]")
        self.location, self.bucket = url, parsed.netloc
        self.prefix = parsed.path.strip("/")
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ValueError(f"image store {url!r} needs boto3: pip install 'lazyedit[s3]'") from None
            client = boto3.client("s3")
        self.client = client
        from botocore.exceptions import BotoCoreError, ClientError
        self._errors = (BotoCoreError, ClientError)
        try:
            client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:   # fail at start-up, naming the bucket, not at the first accepted edit
            raise ValueError(f"image store {url!r}: bucket {self.bucket!r} cannot be reached ({exc})") from None

    def key(self, sha: str) -> str:
        name = f"{sha[:2]}/{_check_sha(sha)}.png"
        return f"{self.prefix}/{name}" if self.prefix else name

    @staticmethod
    def _missing(exc) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def _size(self, sha: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self.key(sha))["ContentLength"])
        except self._errors as exc:
            if self._missing(exc):
                return None
            raise

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if self._size(sha) != len(data):
            self.client.put_object(Bucket=self.bucket, Key=self.key(sha), Body=data, ContentType="image/png")
        return sha

    def get(self, sha: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(sha))["Body"].read()
        except self._errors as exc:
            if self._missing(exc):
                raise FileNotFoundError(f"{self.location}: no blob {sha}") from None
            raise

    def delete(self, sha: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha))   # S3 deletes are idempotent

    def exists(self, sha: str) -> bool:
        return self._size(sha) is not None

    def shas(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "")
        for page in pages:
            for obj in page.get("Contents", []):
                stem = obj["Key"].rsplit("/", 1)[-1].removesuffix(".png")
                if obj["Key"].endswith(".png") and SHA_RE.fullmatch(stem):
                    yield stem

    def remove_partials(self, older_than_s: float) -> int:
        return 0   # put_object stores an object whole or not at all: a crash leaves nothing half written


def open_blob_store(location: str | Path) -> BlobStore:
    """``s3://bucket/prefix`` opens a bucket, anything else is a folder."""
    text = str(location)
    return S3Blobs(text) if text.startswith("s3://") else FolderBlobs(Path(location))


__all__ = ["BlobStore", "FolderBlobs", "S3Blobs", "SHA_RE", "open_blob_store"]
