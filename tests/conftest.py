"""Shared fixtures (generic: usable by any test module)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The real tiny pipeline (random weights, CPU), loaded once per test run."""
    from lazyedit.engine import load_pipeline

    return load_pipeline("tiny", device="cpu")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server on loopback (moto's: the S3 HTTP API boto3 speaks to AWS, MinIO or R2), one per run;
    skipped, saying why, where moto or boto3 is missing (``pip install -e 'backend[test]'`` installs both)."""
    pytest.importorskip("boto3", reason="the S3 image store needs boto3 (pip install -e 'backend[test]')")
    moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto's server (pip install -e 'backend[test]')")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()

