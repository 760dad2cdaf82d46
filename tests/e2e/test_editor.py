"""End-to-end: the built editor against a real `lazyedit serve --model tiny`, in headless Chromium."""
from __future__ import annotations

import io
import json
import struct
import urllib.request

from PIL import Image

from e2e_helpers import drag, generate_and_wait, hook, open_app, open_image, wait_hook

STROKE = [(140, 90), (220, 170), (300, 250)]


def _decode_binary_header(payload: bytes) -> dict:
    (n,) = struct.unpack(">I", payload[:4])
    return json.loads(payload[4:4 + n].decode("utf-8"))


def test_open_paint_generate_accept_undo_reload_export(page, server, sample_png, shots_dir, tmp_path):
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    open_app(page, server)
    assert hook(page, "model")["model"] == "tiny"
    assert "tiny" in page.get_by_test_id("status").inner_text()
    open_image(page, sample_png)
    assert hook(page, "canvasSize") == {"width": 512, "height": 384}
    session = hook(page, "sessionId")
    # the session was created over REST and the socket reopened with its routing key (sticky behind a proxy)
    assert sockets[-1].endswith(f"/ws?session={session}"), sockets
    original = hook(page, "pixel(220, 170)")

    # paint a mask with the mouse
    page.get_by_test_id("tool-brush").click()
    drag(page, STROKE)
    covered = hook(page, "maskCoverage()")
    assert covered > 2000, covered

    # export the mask: a PNG of the canvas size, white/opaque exactly where the mask is
    with page.expect_download() as dl:
        page.get_by_test_id("mask-export").click()
    path = tmp_path / "mask.png"
    dl.value.save_as(path)
    mask = Image.open(path)
    assert mask.size == (512, 384)
    alpha = mask.convert("RGBA").getchannel("A")
    exported = sum(alpha.histogram()[128:])
    assert abs(exported - covered) <= covered * 0.01, (exported, covered)
    assert alpha.getpixel((220, 170)) == 255 and alpha.getpixel((20, 20)) == 0

    # prompt + Enter: previews arrive, then the result is shown in place
    page.get_by_test_id("prompt").fill("a red star")
    page.get_by_test_id("prompt").press("Enter")
    wait_hook(page, "$.previewCount >= 1", timeout=120_000)
    page.screenshot(path=str(shots_dir / "01-preview.png"))
    wait_hook(page, "$.resultShown", timeout=120_000)
    assert hook(page, "previewCount") >= 1
    x0, y0, x1, y1 = hook(page, "lastResultBox")
    assert x0 <= 220 < x1 and y0 <= 170 < y1
    assert page.get_by_test_id("progress").evaluate("p => p.value === p.max")
    page.screenshot(path=str(shots_dir / "02-result.png"))

    # before/after: holding B shows the original
    page.get_by_test_id("canvas").focus()
    page.keyboard.down("b")
    assert hook(page, "comparing") is True
    page.screenshot(path=str(shots_dir / "03-compare-before.png"))
    page.keyboard.up("b")
    assert hook(page, "comparing") is False
    # or the Compare button, held down
    page.get_by_test_id("compare").hover()
    page.mouse.down()
    assert hook(page, "comparing") is True
    page.mouse.up()
    assert hook(page, "comparing") is False
    page.get_by_test_id("compare").focus()  # and from the keyboard, Space held on it
    page.keyboard.down(" ")
    assert hook(page, "comparing") is True
    page.keyboard.up(" ")
    assert hook(page, "comparing") is False

    # accept: stored as history entry 1, pasted into the image
    page.get_by_test_id("accept").click()
    wait_hook(page, "$.historyLength === 2 && $.position === 1 && !$.resultShown")
    edited = hook(page, "pixel(220, 170)")
    assert edited != original
    assert hook(page, "pixel(20, 20)") == [90, 140, 200, 255]  # outside the mask: unchanged
    assert page.get_by_test_id("history-item").count() == 2
    page.screenshot(path=str(shots_dir / "04-accepted.png"))

    # undo (Ctrl+Z) reverts the accepted edit on the server; redo brings it back
    page.get_by_test_id("canvas").focus()
    page.keyboard.press("Control+z")
    wait_hook(page, "$.position === 0")
    wait_hook(page, f"JSON.stringify($.pixel(220, 170)) === '{json.dumps(original, separators=(',', ':'))}'")
    page.get_by_test_id("redo").click()
    wait_hook(page, "$.position === 1")
    wait_hook(page, f"JSON.stringify($.pixel(220, 170)) === '{json.dumps(edited, separators=(',', ':'))}'")

    # reload: the same session comes back with its history and image
    page.reload()
    wait_hook(page, "$.connection === 'open' && $.canvasSize !== null")
    assert hook(page, "sessionId") == session
    assert hook(page, "historyLength") == 2
    assert hook(page, "position") == 1
    assert hook(page, "pixel(220, 170)") == edited
    assert page.get_by_test_id("history-item").count() == 2

    # go back in history by clicking the first thumbnail
    page.get_by_test_id("history-item").first.click()
    wait_hook(page, "$.position === 0")
    assert hook(page, "pixel(220, 170)") == original
    page.screenshot(path=str(shots_dir / "05-after-reload-goto.png"))
    assert not page.problems, page.problems


def test_sketch_guided_fill(page, server, sample_png, shots_dir):
    sent: list[dict] = []

    def on_ws(ws):
        ws.on("framesent", lambda payload: sent.append(_decode_binary_header(payload)) if isinstance(payload, bytes) else None)

    page.on("websocket", on_ws)
    open_app(page, server)
    open_image(page, sample_png)

    # rectangle mask, then a sketch inside it
    page.get_by_test_id("tool-rect").click()
    drag(page, [(120, 60), (360, 300)], steps_between=4)
    assert hook(page, "maskCoverage()") > 240 * 240 * 0.95
    page.get_by_test_id("tool-sketch").click()
    page.get_by_test_id("sketch-color").evaluate("(el) => { el.value = '#ff0000'; el.dispatchEvent(new Event('input')); }")
    drag(page, [(170, 120), (300, 120), (300, 250), (170, 250), (170, 120)])
    page.get_by_test_id("sketch-strength").fill("0.8")
    page.screenshot(path=str(shots_dir / "06-sketch.png"))

    generate_and_wait(page, "a red box")
    edits = [h for h in sent if h.get("type") == "edit"]
    assert edits, sent
    e = edits[-1]
    assert [p["name"] for p in e["parts"]] == ["mask", "sketch"]
    assert e["prompt"] == "a red box" and e["sketch_strength"] == 0.8
    assert all(p["mime"] == "image/png" for p in e["parts"])
    x0, y0, x1, y1 = hook(page, "lastResultBox")
    assert x0 >= 110 and y0 >= 50 and x1 <= 370 and y1 <= 310
    page.screenshot(path=str(shots_dir / "07-sketch-result.png"))
    page.get_by_test_id("accept").click()
    wait_hook(page, "$.historyLength === 2")
    assert not page.problems, page.problems


def test_an_image_over_the_pixel_limit_opens_scaled_down_to_it(page, make_server, tmp_path):
    server = make_server("--max-pixels", "40000")
    open_app(page, server)
    photo = tmp_path / "photo.png"
    im = Image.new("RGB", (400, 300), (220, 40, 40))
    im.paste((40, 60, 220), (200, 0, 400, 300))  # right half blue
    im.save(photo)
    page.get_by_test_id("file-input").set_input_files(str(photo))
    wait_hook(page, "$.canvasSize !== null && $.historyLength === 1")
    assert hook(page, "canvasSize") == {"width": 230, "height": 173}  # 39,790 pixels, the photo's 4:3 kept
    note = page.get_by_test_id("notice")
    assert note.get_attribute("data-code") == "image_scaled" and note.get_attribute("role") == "status"
    assert page.get_by_test_id("error").count() == 0
    assert "400×300" in note.inner_text() and "230×173" in note.inner_text()
    assert hook(page, "pixel(20, 86)")[:3] == [220, 40, 40] and hook(page, "pixel(210, 86)")[:3] == [40, 60, 220]
    # the server holds the scaled image as the session's original
    session = hook(page, "sessionId")
    with urllib.request.urlopen(f"{server.url}/api/sessions/{session}/history/0/image") as r:
        assert Image.open(io.BytesIO(r.read())).size == (230, 173)
    assert not page.problems, page.problems


def test_a_3_mp_photo_opens_unscaled_and_edits_near_its_far_corner(page, server, tmp_path):
    """On a CPU the server takes canvases up to 2048x2048 and reads a 1024 px window around the mask of a larger
    one (docs/service.md, "Canvas size"): the photo opens at its own size, and an edit near its far corner comes
    back there with every pixel away from the mask unchanged."""
    w, h = 2000, 1500
    ramp = Image.linear_gradient("L")
    photo = tmp_path / "photo.png"
    Image.merge("RGB", [ramp.resize((w, h)), ramp.rotate(90).resize((w, h)), Image.new("L", (w, h), 120)]).save(photo)
    open_app(page, server)
    open_image(page, photo)
    assert hook(page, "canvasSize") == {"width": w, "height": h}
    far = [(100, 100), (1990, 10), (1000, 750), (10, 1490)]
    before = [hook(page, f"pixel({x}, {y})") for x, y in far]
    page.get_by_test_id("tool-brush").click()
    drag(page, [(1700, 1200), (1800, 1300)])
    generate_and_wait(page, "a red star")
    x0, y0, x1, y1 = hook(page, "lastResultBox")
    assert 1600 < x0 <= 1700 and 1800 <= x1 < 1900 and 1100 < y0 <= 1200 and 1300 <= y1 < 1400
    page.get_by_test_id("accept").click()
    wait_hook(page, "$.historyLength === 2 && $.position === 1 && !$.resultShown")
    assert [hook(page, f"pixel({x}, {y})") for x, y in far] == before
    assert not page.problems, page.problems


def test_an_image_over_the_byte_limit_shows_the_server_error(page, make_server, sample_png, shots_dir):
    server = make_server("--max-image-bytes", "1000")
    open_app(page, server)
    page.get_by_test_id("file-input").set_input_files(str(sample_png))
    err = page.get_by_test_id("error")
    err.wait_for(state="visible")
    assert err.get_attribute("data-code") == "image_too_large"
    assert err.get_attribute("data-slot") == "open"
    text = err.inner_text()
    assert "too large" in text.lower()
    assert hook(page, "canvasSize") is None  # nothing was opened
    assert hook(page, "connection") == "open"  # the connection survives the error
    page.screenshot(path=str(shots_dir / "08-error-too-large.png"))


def test_empty_mask_error_is_shown_next_to_prompt(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    page.get_by_test_id("prompt").fill("anything")
    page.get_by_test_id("generate").click()
    err = page.get_by_test_id("error")
    err.wait_for(state="visible")
    assert err.get_attribute("data-code") == "empty_mask"
    assert err.get_attribute("data-slot") == "edit"
    assert not hook(page, "busy")


def test_escape_cancels_running_edit(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    drag(page, STROKE)
    page.get_by_test_id("steps").fill("100")  # long enough that Escape always lands mid-run
    page.get_by_test_id("prompt").fill("slow one")
    page.get_by_test_id("generate").click()
    wait_hook(page, "$.busy && $.previewCount >= 1", timeout=120_000)
    page.get_by_test_id("canvas").focus()
    page.keyboard.press("Escape")
    wait_hook(page, "!$.busy", timeout=60_000)
    assert page.get_by_test_id("progress-text").inner_text() == "cancelled"
    assert not hook(page, "resultShown")
    # drawing still works and a new Generate goes through
    drag(page, [(60, 60), (90, 90)])
    page.get_by_test_id("steps").fill("2")
    generate_and_wait(page, "quick")


def test_reconnects_and_resumes_session(page, server, sample_png, shots_dir):
    open_app(page, server)
    open_image(page, sample_png)
    session = hook(page, "sessionId")
    drag(page, STROKE)
    covered = hook(page, "maskCoverage()")
    server.stop()
    wait_hook(page, "$.connection !== 'open'", timeout=15_000)
    page.screenshot(path=str(shots_dir / "09-offline.png"))
    server.start()
    wait_hook(page, "$.connection === 'open'", timeout=30_000)
    wait_hook(page, f"$.sessionId === '{session}' && $.historyLength === 1")
    assert hook(page, "canvasSize") == {"width": 512, "height": 384}
    assert hook(page, "maskCoverage()") == covered  # the mask survives a reconnect
    generate_and_wait(page, "after reconnect")


def test_undo_redo_strokes_and_shortcut_help(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    drag(page, [(60, 60), (120, 60)])
    one = hook(page, "maskCoverage()")
    page.get_by_test_id("tool-eraser").click()
    drag(page, [(60, 60), (120, 60)])
    assert hook(page, "maskCoverage()") < one
    page.get_by_test_id("canvas").focus()
    page.keyboard.press("Control+z")
    assert hook(page, "maskCoverage()") == one
    page.keyboard.press("Control+z")
    assert hook(page, "maskCoverage()") == 0
    page.keyboard.press("Control+Shift+z")
    assert hook(page, "maskCoverage()") == one
    # invert and clear
    page.keyboard.press("i")
    assert hook(page, "maskCoverage()") == 512 * 384 - one
    page.get_by_test_id("mask-clear").click()
    assert hook(page, "maskCoverage()") == 0
    # brush size keys
    page.get_by_test_id("tool-brush").click()
    size = int(page.get_by_test_id("brush-size").input_value())
    page.get_by_test_id("canvas").focus()
    page.keyboard.press("]")
    assert int(page.get_by_test_id("brush-size").input_value()) > size
    page.keyboard.press("?")
    assert page.get_by_test_id("help").is_visible()
    page.keyboard.press("Escape")
    assert not page.get_by_test_id("help").is_visible()
