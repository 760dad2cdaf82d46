"""axe-core (the frontend's dev dependency) audits the real page in the states a user meets: the empty canvas,
an edit's result with a notice beside it, the shortcuts card and the recent images. Every rule axe runs must pass."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from e2e_helpers import drag, generate_and_wait, open_app, open_image

AXE = Path(__file__).resolve().parents[2] / "frontend" / "node_modules" / "axe-core" / "axe.min.js"


def _violations(page) -> list[str]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations)")
    return [f"{v['impact']} {v['id']}: {v['help']} ({', '.join(n['html'][:80] for n in v['nodes'][:3])})" for v in found]


def test_the_editor_passes_axe_in_every_state(page, make_server, tmp_path):
    if not AXE.exists():
        pytest.skip("frontend/node_modules is missing: run `cd frontend && npm ci`")
    server = make_server("--max-pixels", "200000")
    open_app(page, server)
    assert _violations(page) == []

    photo = tmp_path / "photo.png"
    Image.new("RGB", (600, 400), (90, 140, 200)).save(photo)  # over the limit: opens scaled, with a notice
    open_image(page, photo)
    drag(page, [(150, 120), (250, 200)])
    generate_and_wait(page, "a red star")
    assert page.get_by_test_id("notice").is_visible()
    assert _violations(page) == []

    page.get_by_test_id("help-button").click()
    assert page.get_by_test_id("help").is_visible()
    assert _violations(page) == []
    # focus goes into the dialog, and back to the canvas when Esc closes it
    assert page.evaluate("document.activeElement.closest('[role=dialog]') !== null")
    page.keyboard.press("Escape")
    assert page.get_by_test_id("help").is_hidden()
    assert page.evaluate("document.activeElement.dataset.testid") == "canvas"

    page.get_by_test_id("expand-button").click()
    assert page.get_by_test_id("expand").is_visible()
    assert _violations(page) == []
    page.keyboard.press("Escape")  # from inside the dialog's field
    assert page.get_by_test_id("expand").is_hidden()
    assert page.evaluate("document.activeElement.dataset.testid") == "canvas"

    page.get_by_test_id("recent-button").click()
    page.get_by_test_id("recent-item").first.wait_for()
    assert _violations(page) == []
