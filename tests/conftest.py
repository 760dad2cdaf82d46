"""Shared fixtures (generic: usable by any test module)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The real tiny pipeline (random weights, CPU), loaded once per test run."""
    from lazyedit.engine import load_pipeline

    return load_pipeline("tiny", device="cpu")
