"""More end-to-end checks: sessions per image, live mode, supersede, mask import, view, drop/paste."""
from __future__ import annotations

import base64
import json
import re
import struct
import urllib.request

from PIL import Image
from playwright.sync_api import expect

from e2e_helpers import client_point, drag, generate_and_wait, hook, open_app, open_image, wait_hook


def _frames(page):
    """Record decoded headers of WebSocket frames sent and received by the page."""
    log = {"sent": [], "recv": []}

    def header(payload):
        if isinstance(payload, (bytes, bytearray)):
            (n,) = struct.unpack(">I", payload[:4])
            return json.loads(payload[4:4 + n])
        return json.loads(payload)

    def on_ws(ws):
        ws.on("framesent", lambda p: log["sent"].append(header(p)))
        ws.on("framereceived", lambda p: log["recv"].append(header(p)))

    page.on("websocket", on_ws)
    return log


def test_new_image_starts_new_session(page, server, sample_png, tmp_path):
    open_app(page, server)
    open_image(page, sample_png)
    first = hook(page, "sessionId")
    other = tmp_path / "other.png"
    Image.new("RGB", (320, 240), (200, 50, 50)).save(other)
    page.get_by_test_id("file-input").set_input_files(str(other))
    # shown at once; the new session's history arrives once the socket is reopened on it
    wait_hook(page, "$.canvasSize && $.canvasSize.width === 320 && $.historyLength === 1")
    second = hook(page, "sessionId")
    assert second != first
    owner = page.evaluate("localStorage.getItem('lazyedit.owner')")  # both are this browser's sessions
    with urllib.request.urlopen(urllib.request.Request(server.url + "/api/sessions",
                                                       headers={"X-Lazyedit-Owner": owner})) as r:
        ids = {s["session"] for s in json.load(r)}
    assert {first, second} <= ids
    page.reload()
    wait_hook(page, "$.connection === 'open' && $.canvasSize !== null")
    assert hook(page, "sessionId") == second
    assert hook(page, "canvasSize") == {"width": 320, "height": 240}


def test_example_scene_opens_as_a_new_session_with_a_prompt_to_try(page, server, sample_png):
    from lazyedit.training.world import COLOUR_NAMES, SHAPES

    open_app(page, server)
    page.get_by_test_id("empty-example").click()  # from the empty canvas's call to action
    wait_hook(page, "$.canvasSize !== null && $.historyLength === 1")
    first = hook(page, "sessionId")
    assert hook(page, "canvasSize") == {"width": 512, "height": 512}
    hint = page.get_by_test_id("prompt-hint")
    assert hint.is_visible()
    suggested = hint.inner_text().split("“")[1].split("”")[0]
    article, colour, shape = suggested.split()
    assert colour in COLOUR_NAMES and shape in SHAPES
    with urllib.request.urlopen(f"{server.url}/api/sessions/{first}/image") as r:
        stored = Image.open(r)
        stored.load()
    assert stored.size == (512, 512) and len(stored.getcolors(512 * 512)) > 2  # a scene, not a blank page
    # the toolbar's button opens another scene as another session; the user's own image drops the hint
    page.get_by_test_id("example").click()
    wait_hook(page, f"$.sessionId !== '{first}' && $.canvasSize !== null && $.historyLength === 1")
    page.get_by_test_id("file-input").set_input_files(str(sample_png))
    wait_hook(page, "$.canvasSize && $.canvasSize.height === 384 && $.historyLength === 1")
    assert not hint.is_visible()


def test_live_mode_generates_after_a_pause(page, server, sample_png):
    log = _frames(page)
    open_app(page, server)
    open_image(page, sample_png)
    page.get_by_test_id("live-toggle").check()
    page.get_by_test_id("prompt").fill("live edit")
    drag(page, [(100, 100), (200, 160)])
    wait_hook(page, "$.resultShown", timeout=120_000)
    edits = [h for h in log["sent"] if h.get("type") == "edit"]
    assert len(edits) >= 1 and edits[0]["prompt"] == "live edit"
    # more drawing while live: another edit follows automatically, one in flight at a time
    drag(page, [(300, 200), (360, 260)])
    wait_hook(page, "$.busy || $.resultShown === false", timeout=10_000)
    wait_hook(page, "!$.busy && $.resultShown", timeout=120_000)
    assert len([h for h in log["sent"] if h.get("type") == "edit"]) >= 2


def test_new_generate_supersedes_running_one(page, server, sample_png):
    log = _frames(page)
    open_app(page, server)
    open_image(page, sample_png)
    # most of the canvas at 100 steps (seconds even for the tiny model): a thin stroke's few tokens could
    # finish before the second Generate lands when the machine is loaded
    page.get_by_test_id("tool-lasso").click()
    drag(page, [(30, 30), (480, 30), (480, 350), (30, 350)], steps_between=10)
    page.get_by_test_id("steps").fill("100")
    page.get_by_test_id("prompt").fill("first")
    page.get_by_test_id("generate").click()
    wait_hook(page, "$.busy && $.previewCount >= 1", timeout=120_000)
    page.get_by_test_id("steps").fill("2")
    page.get_by_test_id("prompt").fill("second")
    page.get_by_test_id("generate").click()
    wait_hook(page, "$.resultShown", timeout=120_000)
    edits = [h for h in log["sent"] if h.get("type") == "edit"]
    assert [e["prompt"] for e in edits] == ["first", "second"]
    first_id, second_id = edits[0]["id"], edits[1]["id"]
    page.wait_for_timeout(500)
    assert any(h["type"] == "cancelled" and h["id"] == first_id for h in log["recv"])
    results = [h for h in log["recv"] if h["type"] == "result"]
    assert [r["id"] for r in results] == [second_id]
    assert "steps" in page.get_by_test_id("result-info").inner_text()

    # try again: a new edit with a random seed, then discard it
    page.get_by_test_id("retry").click()
    wait_hook(page, "$.busy", timeout=10_000)
    wait_hook(page, "!$.busy && $.resultShown", timeout=120_000)
    retry = [h for h in log["sent"] if h.get("type") == "edit"][-1]
    assert retry["seed"] is None
    page.get_by_test_id("discard").click()
    assert hook(page, "resultShown") is False
    assert hook(page, "historyLength") == 1


def test_try_again_keeps_candidates_and_accept_takes_the_one_shown(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    session = hook(page, "sessionId")
    page.get_by_test_id("tool-rect").click()
    drag(page, [(150, 100), (300, 250)], steps_between=3)
    page.get_by_test_id("steps").fill("2")
    generate_and_wait(page, "a red star")
    assert page.get_by_test_id("candidate").count() == 0  # one result: nothing to choose between
    for n in (2, 3, 4, 4):  # the server keeps 4 un-accepted results a session, so the strip holds 4
        page.get_by_test_id("retry").click()
        wait_hook(page, "$.busy", timeout=10_000)
        wait_hook(page, f"!$.busy && $.resultShown && $.candidates.length === {n}", timeout=120_000)
    cands = hook(page, "candidates")
    assert [c["shown"] for c in cands] == [False, False, False, True]  # the newest is shown
    assert len({c["seed"] for c in cands}) == 4
    strip = page.get_by_test_id("candidate")
    assert strip.count() == 4
    strip.nth(1).click()
    assert [c["shown"] for c in hook(page, "candidates")] == [False, True, False, False]
    assert f"seed {cands[1]['seed']} " in page.get_by_test_id("result-info").inner_text()
    page.keyboard.press("3")  # digits pick too
    assert hook(page, "candidates")[2]["shown"]
    page.keyboard.press("1")
    page.get_by_test_id("accept").click()
    wait_hook(page, "$.historyLength === 2 && !$.resultShown")
    # the server stored the candidate that was shown, not the newest
    with urllib.request.urlopen(f"{server.url}/api/sessions/{session}") as r:
        assert json.load(r)["history"][1]["seed"] == cands[0]["seed"]
    assert hook(page, "candidates") == [] and strip.count() == 0
    # discard drops every candidate of an edit (accepting cleared the mask: paint one again)
    drag(page, [(150, 100), (300, 250)], steps_between=3)
    generate_and_wait(page, "a blue ring")
    page.get_by_test_id("retry").click()
    wait_hook(page, "!$.busy && $.candidates.length === 2", timeout=120_000)
    page.get_by_test_id("discard").click()
    assert hook(page, "candidates") == [] and not hook(page, "resultShown")
    assert not page.get_by_test_id("result").is_visible()


def test_mask_export_import_roundtrip(page, server, sample_png, tmp_path):
    open_app(page, server)
    open_image(page, sample_png)
    page.get_by_test_id("tool-lasso").click()
    drag(page, [(100, 80), (300, 90), (250, 300), (90, 250)], steps_between=10)
    covered = hook(page, "maskCoverage()")
    assert covered > 20_000
    with page.expect_download() as dl:
        page.get_by_test_id("mask-export").click()
    exported = tmp_path / "m.png"
    dl.value.save_as(exported)
    page.get_by_test_id("mask-clear").click()
    assert hook(page, "maskCoverage()") == 0
    page.get_by_test_id("mask-import-input").set_input_files(str(exported))
    wait_hook(page, f"$.maskCoverage() === {covered}")
    # an opaque black/white mask (grey levels, no alpha) imports by grey level
    bw = Image.new("L", (512, 384), 0)
    bw.paste(255, (0, 0, 100, 50))
    bw_path = tmp_path / "bw.png"
    bw.convert("RGB").save(bw_path)
    page.get_by_test_id("mask-import-input").set_input_files(str(bw_path))
    wait_hook(page, "$.maskCoverage() === 5000")
    page.get_by_test_id("canvas").focus()
    page.keyboard.press("Control+z")
    assert hook(page, "maskCoverage()") == covered
    # a mask of another size is stretched over the image, and a notice (not an error) says so
    half = Image.new("L", (256, 192), 0)
    half.paste(255, (0, 0, 50, 25))
    half_path = tmp_path / "half.png"
    half.save(half_path)
    page.get_by_test_id("mask-import-input").set_input_files(str(half_path))
    wait_hook(page, f"$.maskCoverage() !== {covered}")
    assert 4500 < hook(page, "maskCoverage()") < 5500  # 100 x 50 image pixels
    notice = page.get_by_test_id("notice")
    assert notice.get_attribute("data-code") == "mask_scaled" and "256×192" in notice.inner_text()
    assert page.get_by_test_id("error").count() == 0


def test_wheel_zoom_pan_and_fit(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    fit = hook(page, "view")
    box = page.get_by_test_id("canvas").bounding_box()
    page.mouse.move(box["x"] + 200, box["y"] + 200)
    page.mouse.wheel(0, -400)
    wait_hook(page, f"$.view.scale > {fit['scale']} * 1.3")
    # space-drag pans
    zoomed = hook(page, "view")
    page.keyboard.down("Space")
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 350, box["y"] + 330, steps=5)
    page.mouse.up()
    page.keyboard.up("Space")
    moved = hook(page, "view")
    assert round(moved["ox"] - zoomed["ox"]) == 50 and round(moved["oy"] - zoomed["oy"]) == 30
    assert hook(page, "maskCoverage()") == 0  # panning does not paint
    # middle-button drag pans too
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down(button="middle")
    page.mouse.move(box["x"] + 280, box["y"] + 300, steps=3)
    page.mouse.up(button="middle")
    assert round(hook(page, "view")["ox"] - moved["ox"]) == -20
    page.get_by_test_id("fit").click()
    assert abs(hook(page, "view")["scale"] - fit["scale"]) < 1e-6


def test_drop_and_paste_open_images(page, server, sample_png):
    open_app(page, server)
    b64 = base64.b64encode(sample_png.read_bytes()).decode()
    page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
          const stage = document.querySelector('[data-testid=stage]');
          stage.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
          stage.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        b64,
    )
    wait_hook(page, "$.canvasSize !== null && $.canvasSize.width === 512")
    first = hook(page, "sessionId")
    small = Image.new("RGB", (64, 48), (10, 200, 10))
    import io

    buf = io.BytesIO()
    small.save(buf, format="PNG")
    page.evaluate(
        """(b64) => {
          const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], 'pasted.png', { type: 'image/png' }));
          window.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(buf.getvalue()).decode(),
    )
    wait_hook(page, "$.canvasSize !== null && $.canvasSize.width === 64")
    assert hook(page, "sessionId") != first
    assert hook(page, "pixel(5, 5)") == [10, 200, 10, 255]


def test_undo_history_is_capped_and_flattens_old_strokes(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    cap = hook(page, "undoCap")
    page.get_by_test_id("brush-size").fill("6")
    coverage = []
    n = cap + 3
    for i in range(n):
        x, y = 20 + (i % 20) * 24, 20 + (i // 20) * 24
        drag(page, [(x, y), (x + 4, y)], steps_between=2)
        coverage.append(hook(page, "maskCoverage()"))
    assert hook(page, "undoDepth") == cap
    page.get_by_test_id("canvas").focus()
    for _ in range(cap + 5):
        page.keyboard.press("Control+z")
    # the 3 oldest strokes were flattened into the layer's base: undo stops there
    assert hook(page, "undoDepth") == 0
    assert hook(page, "maskCoverage()") == coverage[2]
    for _ in range(cap):
        page.keyboard.press("Control+Shift+z")
    assert hook(page, "maskCoverage()") == coverage[-1]


def test_second_tab_takes_session_over_without_tug_of_war(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    session = hook(page, "sessionId")
    other = page.context.new_page()  # same origin and localStorage: resumes the same session
    other.goto(server.url + "/")
    wait_hook(other, f"$.connection === 'open' && $.sessionId === '{session}' && $.canvasSize !== null")
    err = page.get_by_test_id("error")
    err.wait_for(state="visible")
    assert err.get_attribute("data-code") == "taken_over"
    page.wait_for_timeout(1500)
    assert hook(page, "connection") == "closed"  # no automatic reconnect
    assert hook(other, "connection") == "open"
    page.get_by_test_id("error-action").click()
    wait_hook(page, f"$.connection === 'open' && $.sessionId === '{session}'")
    wait_hook(other, "$.connection === 'closed'")
    other.close()


def test_two_finger_pinch_zooms_and_does_not_paint(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    before = hook(page, "view")
    page.evaluate(
        """() => {
          const el = document.querySelector('[data-testid=canvas]');
          const r = el.getBoundingClientRect();
          const ev = (type, id, x, y) => el.dispatchEvent(new PointerEvent(type, {
            pointerId: id, pointerType: 'touch', isPrimary: id === 11, clientX: r.left + x, clientY: r.top + y,
            button: type === 'pointermove' ? -1 : 0, buttons: type === 'pointerup' ? 0 : 1, bubbles: true, cancelable: true }));
          ev('pointerdown', 11, 300, 300);
          ev('pointermove', 11, 302, 300);
          ev('pointerdown', 12, 400, 300);
          for (let i = 1; i <= 10; i++) { ev('pointermove', 12, 400 + i * 10, 300); ev('pointermove', 11, 300 - i * 10, 300); }
          ev('pointerup', 12, 500, 300);
          ev('pointerup', 11, 200, 300);
        }"""
    )
    after = hook(page, "view")
    assert after["scale"] > before["scale"] * 2.5  # fingers 100 px apart -> 300 px apart
    assert hook(page, "maskCoverage()") == 0
    assert hook(page, "undoDepth") == 0


def test_a_painted_mask_is_encoded_before_generate(page, server, sample_png):
    log = _frames(page)
    open_app(page, server)
    open_image(page, sample_png)
    drag(page, [(120, 110), (220, 170)])
    wait_hook(page, "$.preparedCount >= 1", timeout=60_000)
    prepares = [h for h in log["sent"] if h.get("type") == "prepare"]
    assert prepares and [p["name"] for p in prepares[-1]["parts"]] == ["mask"]
    prepared = [h for h in log["recv"] if h["type"] == "prepared"]
    assert prepared[-1]["id"] == prepares[-1]["id"] and prepared[-1]["timings"]["context_ms"] > 0
    # undo leaves an empty mask: nothing to send; redo brings the mask back, and it is sent again (a cache hit)
    page.keyboard.press("Control+z")
    page.wait_for_timeout(600)
    assert len([h for h in log["sent"] if h.get("type") == "prepare"]) == len(prepares)
    page.keyboard.press("Control+y")
    wait_hook(page, "$.preparedCount >= 2", timeout=60_000)
    assert [h for h in log["recv"] if h["type"] == "prepared"][-1]["timings"]["context_ms"] == 0
    page.get_by_test_id("steps").fill("2")
    generate_and_wait(page, "a red hat")
    result = [h for h in log["recv"] if h["type"] == "result"][-1]
    assert result["timings"]["context_ms"] == 0 and result["timings"]["vae_encode_ms"] == 0


def test_on_a_phone_everything_fits_the_screen_and_a_finger_paints_the_mask(browser, server, sample_png):
    """A 390 px wide touch screen: nothing lies beyond the screen's right edge (no sideways scrolling, no
    control cut off, Generate included), and a finger's real touch stroke paints a mask that generates."""
    width = 390
    ctx = browser.new_context(viewport={"width": width, "height": 844}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    try:
        open_app(page, server)
        open_image(page, sample_png)
        # a mobile browser widens its layout to whatever overflows (and zooms out): measure against the screen
        assert page.evaluate("[window.innerWidth, document.documentElement.scrollWidth]") == [width, width]
        beyond = page.evaluate(
            """() => [...document.querySelectorAll('button, input, label, progress')]
                 .filter((el) => el.offsetParent !== null && el.type !== 'file')
                 .map((el) => [el.dataset.testid || el.textContent.trim(), el.getBoundingClientRect()])
                 .filter(([, r]) => r.left < 0 || r.right > 390.5)
                 .map(([name, r]) => `${name}: ${Math.round(r.left)}..${Math.round(r.right)}`)"""
        )
        assert beyond == []
        stage = page.get_by_test_id("canvas").bounding_box()
        assert stage["height"] >= 250 and stage["width"] >= width - 1
        cdp = ctx.new_cdp_session(page)
        points = [client_point(page, x, 150) for x in range(120, 300, 12)]

        def touch(kind, p=None):
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": p[0], "y": p[1]}] if p else []})

        touch("touchStart", points[0])
        for p in points[1:]:
            touch("touchMove", p)
        touch("touchEnd")
        wait_hook(page, "$.maskCoverage() > 0 && $.undoDepth === 1")
        generate = page.get_by_test_id("generate")
        generate.scroll_into_view_if_needed()
        box = generate.bounding_box()
        assert 0 <= box["x"] and box["x"] + box["width"] <= width
        page.get_by_test_id("prompt").fill("a red circle")
        # a finger needs longer than this to get from the canvas to the button; Chromium folds a tap that
        # comes within ~0.3 s of the stroke's end into that gesture and sends no click
        page.wait_for_timeout(500)
        generate.tap()
        wait_hook(page, "$.resultShown", timeout=120_000)

        # no B key on a phone: holding Compare shows the original where the result is, letting go brings it back
        x0, y0, x1, y1 = hook(page, "lastResultBox")
        at = client_point(page, (x0 + x1) / 2, (y0 + y1) / 2)
        original = hook(page, f"pixel({(x0 + x1) // 2}, {(y0 + y1) // 2})")

        def shown():
            return page.evaluate(
                """([x, y]) => { const c = document.querySelector('[data-testid=canvas]'); const r = c.getBoundingClientRect();
                     const k = c.width / r.width;
                     return Array.from(c.getContext('2d').getImageData((x - r.left) * k, (y - r.top) * k, 1, 1).data); }""",
                list(at))

        assert shown() != original
        compare = page.get_by_test_id("compare").bounding_box()
        assert compare["x"] >= 0 and compare["x"] + compare["width"] <= width
        touch("touchStart", (compare["x"] + compare["width"] / 2, compare["y"] + compare["height"] / 2))
        wait_hook(page, "$.comparing === true")
        page.wait_for_function("() => new Promise(requestAnimationFrame)")
        assert shown() == original
        touch("touchEnd")
        wait_hook(page, "$.comparing === false")
        page.wait_for_function("() => new Promise(requestAnimationFrame)")
        assert shown() != original and hook(page, "resultShown")
    finally:
        ctx.close()


def test_recent_images_go_back_to_an_earlier_session_and_delete_one(page, server, tmp_path):
    """Two opened images are two stored sessions: Recent lists both, newest first, opens the earlier one with
    its pixels and history, and deletes the other from the server."""
    open_app(page, server)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.new("RGB", (320, 240), (200, 50, 50)).save(first)
    Image.new("RGB", (320, 240), (40, 160, 90)).save(second)
    open_image(page, first)
    first_id = hook(page, "sessionId")
    drag(page, [(40, 40), (200, 120)])
    assert hook(page, "maskCoverage()") > 0
    page.get_by_test_id("file-input").set_input_files(str(second))
    wait_hook(page, f"$.sessionId !== '{first_id}' && $.historyLength === 1")
    second_id = hook(page, "sessionId")
    # the same size, but another image: the mask painted on the first is not carried over
    assert hook(page, "pixel(10, 10)") == [40, 160, 90, 255] and hook(page, "maskCoverage()") == 0
    drag(page, [(60, 60), (220, 140)])

    page.get_by_test_id("recent-button").click()
    items = page.get_by_test_id("recent-item")
    items.first.wait_for()
    assert [items.nth(i).get_attribute("data-session") for i in range(items.count())] == [second_id, first_id]
    assert items.nth(0).get_by_test_id("recent-open").get_attribute("aria-current") == "true"
    assert items.nth(0).get_by_test_id("recent-delete").count() == 0  # the open image cannot be deleted here
    assert "320×240" in items.nth(0).inner_text() and "320×240" in items.nth(1).inner_text()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=recent-item] img[src^=blob]').length === 2")

    items.nth(1).get_by_test_id("recent-open").click()
    assert page.get_by_test_id("recent").is_hidden()
    wait_hook(page, f"$.sessionId === '{first_id}' && $.historyLength === 1 && $.pixel(10, 10)[0] === 200")
    assert hook(page, "pixel(10, 10)") == [200, 50, 50, 255] and hook(page, "maskCoverage()") == 0
    page.reload()  # the page comes back to the session it went back to
    wait_hook(page, "$.connection === 'open' && $.canvasSize !== null")
    assert hook(page, "sessionId") == first_id

    page.keyboard.press("h")
    other = page.locator(f"[data-testid=recent-item][data-session='{second_id}']")
    other.get_by_test_id("recent-delete").click()
    other.wait_for(state="detached")
    owner = page.evaluate("localStorage.getItem('lazyedit.owner')")
    request = urllib.request.Request(server.url + "/api/sessions", headers={"X-Lazyedit-Owner": owner})
    with urllib.request.urlopen(request) as r:
        assert [s["session"] for s in json.load(r)] == [first_id]
    page.keyboard.press("Escape")
    assert page.get_by_test_id("recent").is_hidden()

    # another browser has its own owner key: the images opened here are not listed there
    fresh = page.context.browser.new_page()
    try:
        open_app(fresh, server)
        fresh.get_by_test_id("empty-recent").click()
        expect(fresh.get_by_test_id("recent")).to_contain_text("No stored images from this browser yet")
        assert fresh.get_by_test_id("recent-item").count() == 0
        other_owner = fresh.evaluate("localStorage.getItem('lazyedit.owner')")
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", other_owner) and other_owner != owner
    finally:
        fresh.close()
    assert not page.problems, page.problems


def test_a_link_opens_the_image_in_another_browser_which_takes_it_over(page, server, tmp_path):
    """Link copies an address that opens this session (its pixels and history) in another browser; the address
    bar drops the session once taken, a reload stays on it, and the first page is told it moved."""
    open_app(page, server)
    page.get_by_test_id("share").click()  # nothing open yet: a named error, no link
    assert page.get_by_test_id("error").get_attribute("data-code") == "no_canvas"
    src = tmp_path / "shared.png"
    Image.new("RGB", (200, 150), (30, 120, 210)).save(src)
    open_image(page, src)
    sid = hook(page, "sessionId")
    page.get_by_test_id("share").click()
    notice = page.get_by_test_id("notice")
    expect(notice).to_contain_text("?session=")
    link = re.search(r"https?://\S+", notice.inner_text()).group(0)
    assert link == f"{server.url}/?session={sid}" and "token" not in link

    other = page.context.browser.new_page()  # another browser: its own storage and owner key
    try:
        other.goto(link)
        wait_hook(other, f"$.sessionId === '{sid}' && $.canvasSize !== null && $.pixel(5, 5)[2] === 210")
        assert hook(other, "canvasSize") == {"width": 200, "height": 150} and "session=" not in other.url
        other.reload()
        wait_hook(other, "$.connection === 'open' && $.canvasSize !== null")
        assert hook(other, "sessionId") == sid
        # one browser edits a session at a time: the first is told, and can take it back
        expect(page.get_by_test_id("error")).to_have_attribute("data-code", "taken_over")
        # the image is not the other browser's: its Recent does not list it
        other.get_by_test_id("recent-button").click()
        expect(other.get_by_test_id("recent")).to_contain_text("No stored images from this browser yet")
    finally:
        other.close()
    assert not page.problems, page.problems


def test_expand_grows_the_canvas_with_its_border_masked_and_history_takes_it_back(page, server, sample_png):
    open_app(page, server)
    open_image(page, sample_png)
    corner = hook(page, "pixel(20, 20)")
    page.get_by_test_id("canvas").focus()
    page.keyboard.press("x")  # the shortcut opens the dialog, the right side focused
    dialog = page.get_by_test_id("expand")
    assert dialog.is_visible() and page.evaluate("document.activeElement.dataset.testid") == "expand-right"
    page.get_by_test_id("expand-right").fill("5000")  # what is wrong is said, and nothing can be sent
    assert "4096" in page.get_by_test_id("expand-size").inner_text()
    assert page.get_by_test_id("expand-apply").is_disabled()
    page.get_by_test_id("expand-right").fill("128")
    page.get_by_test_id("expand-top").fill("32")
    assert page.get_by_test_id("expand-size").inner_text() == "512×384 → 640×416"
    page.get_by_test_id("expand-right").press("Enter")
    wait_hook(page, "$.canvasSize && $.canvasSize.width === 640 && $.historyLength === 2 && $.position === 1")
    assert hook(page, "canvasSize") == {"width": 640, "height": 416} and not dialog.is_visible()
    assert "expanded to 640x416" in page.get_by_test_id("history-item").nth(1).inner_text()
    # the image sits below the new top rows, and exactly the new border is masked, ready for Generate
    assert hook(page, "pixel(20, 52)") == corner
    assert hook(page, "maskCoverage()") == 640 * 416 - 512 * 384
    assert page.get_by_test_id("notice").get_attribute("data-code") == "expanded"
    page.get_by_test_id("generate").click()  # an empty prompt: continue the picture
    wait_hook(page, "$.resultShown", timeout=120_000)
    assert hook(page, "lastResultBox") == [0, 0, 640, 416]
    page.get_by_test_id("accept").click()
    wait_hook(page, "$.historyLength === 3 && $.position === 2 && !$.resultShown")
    assert hook(page, "pixel(20, 52)") == corner  # the old image is untouched by the fill
    # back to the first entry: the original size again
    page.get_by_test_id("history-item").first.click()
    wait_hook(page, "$.position === 0 && $.canvasSize.width === 512")
    assert hook(page, "canvasSize") == {"width": 512, "height": 384} and hook(page, "pixel(20, 20)") == corner
    assert not page.problems, page.problems
