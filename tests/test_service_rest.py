"""REST API, OpenAPI, persistence across an app restart, frontend serving."""

from __future__ import annotations

import numpy as np

from test_service_helpers import WS, box_mask, decode_png, noise_image, paste, png, prepared_count, service


def test_rest_sessions_lifecycle(tmp_path, tiny_pipeline):
    data = tmp_path / "data"
    with service(data, tiny_pipeline, max_pixels=200 * 200) as c:
        h = c.get("/api/health").json()
        assert h["status"] == "ok" and h["protocol"] == 1 and h["model"] == "tiny" and h["device"] == "cpu"
        im = noise_image(80, 60)
        tiny_pipeline.clear_caches()
        r = c.post("/api/sessions", files={"image": ("a.png", png(im), "image/png")})
        assert r.status_code == 201, r.text
        assert prepared_count(c, 1) == 1  # the uploaded canvas is encoded before anyone asks
        sid = r.json()["session"]
        assert r.json() == {"session": sid, "width": 80, "height": 60, "version": 1}
        assert c.post("/api/sessions", files={"image": ("a.png", b"nope", "image/png")}).json()["detail"]["code"] == "bad_image"
        r = c.post("/api/sessions", files={"image": ("a.png", png(noise_image(250, 250)), "image/png")})
        assert r.status_code == 413 and r.json()["detail"]["code"] == "image_too_large"
        [item] = c.get("/api/sessions").json()
        assert item["session"] == sid and item["edits"] == 0 and item["created"].endswith("Z")
        got = decode_png(c.get(f"/api/sessions/{sid}/image").content)
        assert np.array_equal(np.asarray(got), np.asarray(im))
        # edit it over the WebSocket, accept, see it over REST
        with c.websocket_connect("/ws") as raw:
            ws = WS(raw)
            ws.hello(session=sid)
            ws.recv()
            mask = box_mask(80, 60, (10, 10, 40, 30))
            _, res, region = ws.edit_result(mask, "e", steps=1)
            assert res["timings"]["vae_encode_ms"] == 0 and res["timings"]["context_ms"] > 0
            ws.send({"type": "accept", "id": "a", "target": "e"})
            assert ws.recv()[0]["of"] == "accept"
        edited = paste(im, region.convert("RGB"), res["box"])
        d = c.get(f"/api/sessions/{sid}").json()
        assert d["position"] == 1 and [e["prompt"] for e in d["history"]] == [None, "a red star"]
        assert np.array_equal(np.asarray(decode_png(c.get(f"/api/sessions/{sid}/history/1/image").content)), np.asarray(edited))
        assert np.array_equal(np.asarray(decode_png(c.get(f"/api/sessions/{sid}/history/0/image").content)), np.asarray(im))
        assert c.get(f"/api/sessions/{sid}/history/2/image").status_code == 404
        assert c.get("/api/sessions").json()[0]["edits"] == 1
        # ids never reach the file system raw
        for bad in ("..%2F..%2Fetc%2Fpasswd", "....", "A" * 22, "%2e%2e"):
            assert c.get(f"/api/sessions/{bad}/image").status_code == 404
            assert c.delete(f"/api/sessions/{bad}").status_code in (404, 405)  # never 2xx
        files = list((data / "images").rglob("*.png"))
        assert len(files) == 2
        assert c.delete(f"/api/sessions/{sid}").status_code == 204
        assert c.get(f"/api/sessions/{sid}").status_code == 404
        assert c.get("/api/sessions").json() == []
        assert list((data / "images").rglob("*.png")) == []


def test_sessions_are_listed_and_deleted_by_their_owner_only(tmp_path, tiny_pipeline):
    """A browser's owner key (header over REST, hello over the WebSocket) makes the sessions it creates its own:
    only it lists and deletes them. Knowing a session's id is still enough to open it."""
    alice, bob = {"X-Lazyedit-Owner": "a" * 22}, {"X-Lazyedit-Owner": "B-" * 11}
    with service(tmp_path / "d", tiny_pipeline) as c:
        image = {"image": ("a.png", png(noise_image(32, 32)), "image/png")}
        by_rest = c.post("/api/sessions", files=image, headers=alice).json()["session"]
        anonymous = c.post("/api/sessions", files=image).json()["session"]
        with c.websocket_connect("/ws") as raw:
            ws = WS(raw)
            by_ws = ws.hello(owner="a" * 22)["session"]
            ws.canvas(noise_image(32, 32, seed=2))
        with c.websocket_connect("/ws") as raw:  # a socket that only opens another's session does not own it
            ws = WS(raw)
            ws.hello(session=by_rest, owner="B-" * 11)
            assert ws.recv()[0]["type"] == "canvas"

        def listed(headers=None):
            return {s["session"] for s in c.get("/api/sessions", headers=headers or {}).json()}

        assert listed(alice) == {by_rest, by_ws} and listed(bob) == set() and listed() == {anonymous}
        assert c.get(f"/api/sessions/{by_rest}", headers=bob).status_code == 200  # the id opens it
        r = c.delete(f"/api/sessions/{by_rest}", headers=bob)
        assert r.status_code == 404 and r.json()["detail"]["code"] == "unknown_session"
        assert c.delete(f"/api/sessions/{anonymous}", headers=alice).status_code == 404
        assert listed(alice) == {by_rest, by_ws} and listed() == {anonymous}
        assert c.delete(f"/api/sessions/{by_rest}", headers=alice).status_code == 204
        assert listed(alice) == {by_ws} and c.get(f"/api/sessions/{by_rest}").status_code == 404

        r = c.get("/api/sessions", headers={"X-Lazyedit-Owner": "not a key"})
        assert r.status_code == 400 and r.json()["detail"]["code"] == "bad_owner"
        assert "X-Lazyedit-Owner" in r.json()["detail"]["message"]
        with c.websocket_connect("/ws") as raw:  # a malformed key in hello is named, and the socket stays
            ws = WS(raw)
            ws.send({"type": "hello", "id": "h1", "protocol": 1, "owner": "x"})
            err = ws.recv()[0]
            assert err["type"] == "error" and err["code"] == "bad_message" and "owner" in err["message"]
            assert ws.hello(owner="c" * 22)["session"]


def test_openapi_describes_the_api(tmp_path, tiny_pipeline):
    with service(tmp_path / "d", tiny_pipeline) as c:
        spec = c.get("/openapi.json").json()
        paths = spec["paths"]
        assert {"/api/health", "/api/sessions", "/api/sessions/{sid}", "/api/sessions/{sid}/image",
                "/api/sessions/{sid}/history/{n}/image", "/api/example"} <= set(paths)
        schemas = spec["components"]["schemas"]
        assert {"Health", "SessionCreated", "SessionSummary", "SessionDetail", "HistoryEntry"} <= set(schemas)
        assert "image/png" in paths["/api/sessions/{sid}/image"]["get"]["responses"]["200"]["content"]
        assert paths["/api/sessions"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("SessionCreated")
        assert c.get("/").status_code == 200


def test_example_scenes_come_from_the_procedural_world(tmp_path, tiny_pipeline):
    from lazyedit.training.world import COLOUR_NAMES, SHAPES, example_scene, render_scene

    with service(tmp_path / "d", tiny_pipeline, token="s3cret") as c:
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/example?seed=7").status_code == 401  # behind the token, as the sessions are
        r = c.get("/api/example?seed=7&size=256", headers=auth)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        scene, prompt = example_scene(7)
        assert np.array_equal(np.asarray(decode_png(r.content)), np.asarray(render_scene(scene, 256)))
        assert r.headers["x-lazyedit-prompt"] == prompt
        colour, shape = prompt.split()[-2:]
        assert colour in COLOUR_NAMES and shape in SHAPES
        assert decode_png(c.get("/api/example", headers=auth).content).size == (512, 512)  # the editor's canvas
        assert c.get("/api/example?seed=8&size=256", headers=auth).content != r.content
        for bad, field in (("seed=-1", "seed"), ("size=4096", "size"), ("size=big", "size")):
            r = c.get(f"/api/example?{bad}", headers=auth)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", field], r.text
        assert c.get("/api/health").status_code == 200  # a bad query costs nothing else


def test_any_of_the_last_results_kept_can_be_accepted(tmp_path, tiny_pipeline):
    with service(tmp_path / "d", tiny_pipeline, results_kept=2) as c:
        with c.websocket_connect("/ws") as raw:
            ws = WS(raw)
            assert ws.hello()["limits"]["results_kept"] == 2  # the editor offers as many candidates
            im = noise_image(96, 64)
            ws.canvas(im)
            mask = box_mask(96, 64, (30, 20, 60, 44))
            regions, boxes = {}, {}
            for rid, seed in (("e1", 1), ("e2", 2), ("e3", 3)):
                _, res, regions[rid] = ws.edit_result(mask, rid, steps=1, seed=seed)
                boxes[rid] = res["box"]
            ws.send({"type": "accept", "id": "a1", "target": "e1"})  # the oldest of three: no longer kept
            err, _ = ws.recv()
            assert err["type"] == "error" and err["code"] == "unknown_target" and err["id"] == "a1"
            assert not np.array_equal(np.asarray(regions["e2"]), np.asarray(regions["e3"]))  # seeds differ
            ws.send({"type": "accept", "id": "a2", "target": "e2"})  # not the newest, but kept
            ack, _ = ws.recv()
            assert ack["type"] == "ack" and ack["of"] == "accept" and ack["history"][1]["seed"] == 2
        [item] = c.get("/api/sessions").json()
        stored = np.asarray(decode_png(c.get(f"/api/sessions/{item['session']}/image").content))
        assert np.array_equal(stored, np.asarray(paste(im, regions["e2"].convert("RGB"), boxes["e2"])))


def test_persistence_across_app_restart(tmp_path, tiny_pipeline):
    data = tmp_path / "data"
    im = noise_image(64, 64, seed=3)
    mask = box_mask(64, 64, (16, 16, 40, 40))
    with service(data, tiny_pipeline) as c:
        with c.websocket_connect("/ws") as raw:
            ws = WS(raw)
            sid = ws.hello()["session"]
            edited = ws.accepted_edit(im, mask, "e1", steps=1, seed=11)
            ws.send({"type": "undo", "id": "u"})
            assert ws.recv()[0]["position"] == 0
    with service(data, tiny_pipeline) as c:  # a new app, process state gone: only the data folder remains
        with c.websocket_connect("/ws") as raw:
            ws = WS(raw)
            ready = ws.hello(session=sid)
            assert ready["position"] == 0 and [e["seed"] for e in ready["history"]] == [None, 11]
            h, parts = ws.recv()
            assert h["type"] == "canvas" and np.array_equal(np.asarray(decode_png(parts["image"])), np.asarray(im))
            ws.send({"type": "redo", "id": "r"})
            h, parts = ws.recv()
            assert np.array_equal(np.asarray(decode_png(parts["image"])), np.asarray(edited))
            ws.edit_result(mask, "e2", steps=1)


def test_replica_serves_the_stored_session_not_its_stale_copy(tmp_path, tiny_pipeline):
    """Two replicas on one store (docs/scaling.md): a session served by A, then by B (which accepts an edit),
    then by A again. A must answer with the stored state, not the copy it still holds in memory."""
    data = tmp_path / "data"
    im = noise_image(64, 64, seed=5)
    mask = box_mask(64, 64, (8, 8, 40, 40))
    with service(data, tiny_pipeline) as a, service(data, tiny_pipeline) as b:
        with a.websocket_connect("/ws") as raw:
            ws = WS(raw)
            sid = ws.hello()["session"]
            ws.canvas(im)
        with b.websocket_connect(f"/ws?session={sid}") as raw:
            ws = WS(raw)
            ws.hello(session=sid)
            assert ws.recv()[0]["type"] == "canvas"
            _, res, region = ws.edit_result(mask, "e1", steps=1, seed=3)
            ws.send({"type": "accept", "id": "a", "target": "e1"})
            assert ws.recv()[0]["of"] == "accept"
        edited = paste(im, region.convert("RGB"), res["box"])
        with a.websocket_connect(f"/ws?session={sid}") as raw:
            ws = WS(raw)
            ready = ws.hello(session=sid)
            assert ready["position"] == 1 and [e["seed"] for e in ready["history"]] == [None, 3]
            h, parts = ws.recv()
            assert h["type"] == "canvas" and np.array_equal(np.asarray(decode_png(parts["image"])), np.asarray(edited))


def test_the_context_window_follows_the_device_unless_set(tmp_path, tiny_pipeline):
    """On a CPU an edit reads a 1024 px window of a larger canvas (the context encoder's cost grows with the
    square of what it reads); a GPU reads the whole canvas; a window that is set wins, 0 meaning the whole.
    Canvases up to 2048x2048 are taken either way."""
    from lazyedit.service.settings import default_context_window

    assert default_context_window("cpu") == 1024
    assert default_context_window("cuda") == default_context_window("cuda:1") == 0
    try:
        with service(tmp_path / "cpu", tiny_pipeline) as c:
            assert tiny_pipeline.context_window == 1024
            with c.websocket_connect("/ws") as raw:
                assert WS(raw).hello()["limits"]["max_pixels"] == 2048 * 2048
            big = png(noise_image(2049, 2048))
            r = c.post("/api/sessions", files={"image": ("big.png", big, "image/png")})
            assert r.status_code == 413 and r.json()["detail"]["code"] == "image_too_large"
            assert "4194304" in r.json()["detail"]["message"]
        with service(tmp_path / "whole", tiny_pipeline, context_window=0):
            assert tiny_pipeline.context_window is None
        with service(tmp_path / "set", tiny_pipeline, context_window=64) as c, c.websocket_connect("/ws") as raw:
            assert tiny_pipeline.context_window == 64
            ws = WS(raw)
            ws.hello()
            im, mask = noise_image(300, 200), box_mask(300, 200, (250, 150, 280, 180))
            ws.canvas(im)
            _, result, region = ws.edit_result(mask, "w1", steps=2, seed=3)  # read through a 64 px window
            assert result["box"] == [250, 150, 280, 180]
            edited, orig = np.asarray(paste(im, region.convert("RGB"), result["box"])), np.asarray(im)
            assert np.array_equal(edited[~mask], orig[~mask]) and not np.array_equal(edited[mask], orig[mask])
    finally:
        tiny_pipeline.context_window = None
