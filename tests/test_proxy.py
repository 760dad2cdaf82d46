"""Two `lazyedit serve --model tiny` replicas on loopback behind a real nginx running deploy/nginx.conf,
sharing one PostgreSQL database (started by this run, see test_postgres.py) and their images: once in one
images folder, once in an S3 bucket (a local S3 server, conftest.py) with a data folder of their own each, as
replicas on separate machines.

Checks: a session created directly on replica A resumes through the proxy; every request about a
session (``/ws?session=ID``, ``/api/sessions/ID``) reaches the same replica, so an un-accepted result can
be accepted after a reconnect and a second socket takes the session over (4409); sessions spread over
both replicas. The ``?session=`` check itself is tested without nginx at the end.
Skipped, saying why, where nginx or PostgreSQL is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lazyedit.service.framing import Part, decode_frame, encode_frame
from test_postgres import free_port, pg_server  # noqa: F401  (pg_server is a fixture)
from test_service_helpers import WS, box_mask, decode_png, mask_png, noise_image, paste, png, s3_client, s3_environment, service

REPO = Path(__file__).resolve().parents[1]
NGINX_CONF = REPO / "deploy" / "nginx.conf"


def _nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}")


def _test_conf(tmp: Path, listen: int, replicas: list[int]) -> Path:
    """deploy/nginx.conf with its "@test" lines pointed at loopback and the temp folder."""
    out = []
    for line in NGINX_CONF.read_text().splitlines():
        m = re.search(r"#\s*@test (\w+)\s*$", line)
        if m is None or line.lstrip().startswith("#"):
            out.append(line)
            continue
        tag = m.group(1)
        if tag == "pid":
            out.append(f"pid {tmp}/nginx.pid;")
        elif tag == "error_log":
            out.append(f"error_log {tmp}/error.log warn;")
        elif tag == "access_log":
            out += ["log_format route '$upstream_addr $request_method $request_uri $status';",
                    f"access_log {tmp}/access.log route;"]
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                out.append(f"{kind}_temp_path {tmp}/{kind};")
        elif tag == "upstream":
            out += [f"server 127.0.0.1:{p} max_fails=2 fail_timeout=10s;" for p in replicas]
        elif tag == "listen":
            out.append(f"listen 127.0.0.1:{listen};")
        else:
            raise AssertionError(f"unknown @test tag {tag!r} in {NGINX_CONF}")
    conf = tmp / "nginx.conf"
    conf.write_text("\n".join(out) + "\n")
    return conf


@pytest.fixture(scope="module", params=["shared-folder", "s3-bucket"])
def cluster(request, pg_server, tmp_path_factory):  # noqa: F811
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx not found: install it (Debian: apt-get install nginx-light) to run the proxy test")
    tmp = tmp_path_factory.mktemp("proxy")
    url = pg_server.new_database()
    env, store_args = dict(os.environ), []
    data_dirs = [tmp / "shared-data"] * 2            # the images volume every replica mounts
    if request.param == "s3-bucket":
        env.update(s3_environment(request.getfixturevalue("s3_endpoint")))
        bucket = f"le-proxy-{os.getpid()}"
        s3_client(env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        store_args = ["--image-store", f"s3://{bucket}/images"]
        data_dirs = [tmp / "replica0-data", tmp / "replica1-data"]   # nothing shared but the bucket
    procs: list[subprocess.Popen] = []
    try:
        ports = [free_port(), free_port()]
        logs = []
        for i, (port, data) in enumerate(zip(ports, data_dirs)):
            log = tmp / f"replica{i}.log"
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lazyedit.service", "--model", "tiny", "--device", "cpu", "--port", str(port),
                 "--data-dir", str(data), "--database-url", url, "--trusted-proxy", "127.0.0.1",
                 "--log-level", "warning", *store_args],
                stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env))
        for proc, port, log in zip(procs, ports, logs):
            _wait_http(f"http://127.0.0.1:{port}/api/health", proc, log)
        listen = free_port()
        conf = _test_conf(tmp, listen, ports)
        check = subprocess.run([nginx, "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        nlog = tmp / "nginx.out"
        procs.append(subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log"),
                                       "-g", "daemon off;"], stdout=nlog.open("wb"), stderr=subprocess.STDOUT))
        _wait_http(f"http://127.0.0.1:{listen}/api/health", procs[-1], nlog)
        yield {"proxy": f"127.0.0.1:{listen}", "replicas": [f"127.0.0.1:{p}" for p in ports], "tmp": tmp,
               "data_dirs": data_dirs}
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _connect(hostport: str, session: str | None = None):
    from websockets.sync.client import connect

    return connect(f"ws://{hostport}/ws" + (f"?session={session}" if session else ""), max_size=None,
                   open_timeout=30)


def _recv(ws):
    msg = ws.recv(timeout=60)
    if isinstance(msg, bytes):
        h, parts = decode_frame(msg)
        return h, {k: p.data for k, p in parts.items()}
    return json.loads(msg), {}


def _recv_until(ws, *types):
    for _ in range(500):
        h, parts = _recv(ws)
        if h["type"] in types:
            return h, parts
    raise AssertionError(f"no {types}")


def _hello(ws, session=None, rid="h"):
    ws.send(json.dumps({"type": "hello", "id": rid, "protocol": 1, **({"session": session} if session else {})}))
    return _recv(ws)[0]


def _edit(ws, mask, rid, seed):
    ws.send(encode_frame({"type": "edit", "id": rid, "prompt": "a lamp", "steps": 2, "seed": seed},
                         [Part("mask", mask_png(mask), "image/png")]))
    h, parts = _recv_until(ws, "result", "error", "cancelled")
    assert h["type"] == "result", h
    return h, decode_png(parts["image"])


def _routes(tmp: Path) -> list[tuple[str, str]]:
    """(upstream, request uri) of every request nginx logged so far."""
    out = []
    for line in (tmp / "access.log").read_text().splitlines():
        upstream, _method, uri, status = line.split(" ")
        if upstream != "-":          # "-": answered by nginx itself (the 413)
            out.append((upstream, uri))
    return out


def test_session_from_replica_a_resumes_stickily_through_the_proxy(cluster):
    proxy, (replica_a, _) = cluster["proxy"], cluster["replicas"]
    im = noise_image(64, 48, seed=3)
    mask = box_mask(64, 48, (8, 8, 40, 32))

    # 1. created, edited and accepted directly on replica A
    with _connect(replica_a) as ws:
        sid = _hello(ws)["session"]
        ws.send(encode_frame({"type": "canvas", "id": "c"}, [Part("image", png(im), "image/png")]))
        assert _recv(ws)[0]["type"] == "ack"
        res, region = _edit(ws, mask, "e1", 5)
        ws.send(json.dumps({"type": "accept", "id": "a1", "target": "e1"}))
        assert _recv(ws)[0]["position"] == 1
    edited = np.asarray(paste(im, region.convert("RGB"), res["box"]))

    # 2. resumed through the proxy, several times
    for _ in range(3):
        with _connect(proxy, sid) as ws:
            ready = _hello(ws, sid)
            assert ready["type"] == "ready" and ready["position"] == 1 and len(ready["history"]) == 2
            h, parts = _recv(ws)
            assert h["type"] == "canvas"
            assert np.array_equal(np.asarray(decode_png(parts["image"]).convert("RGB")), edited)

    # 3. a socket keyed to this session serves no other
    with _connect(proxy, sid) as ws:
        err = _hello(ws, None, rid="h2")
        assert err["type"] == "error" and err["code"] == "bad_message" and err["id"] == "h2"

    # 4. a result left un-accepted when the socket dropped is accepted after reconnecting: only the
    #    replica that computed it holds it in memory, so this needs the sticky route
    with _connect(proxy, sid) as ws:
        _hello(ws, sid)
        _recv(ws)
        _edit(ws, mask, "e2", 9)
    with _connect(proxy, sid) as ws:
        _hello(ws, sid)
        _recv(ws)
        ws.send(json.dumps({"type": "accept", "id": "a2", "target": "e2"}))
        ack = _recv_until(ws, "ack", "error")[0]
        assert ack["type"] == "ack" and ack["position"] == 2, ack

        # 5. a second socket for the session lands on the same replica and takes it over (4409)
        with _connect(proxy, sid) as ws2:
            assert _hello(ws2, sid)["type"] == "ready"
            from websockets.exceptions import ConnectionClosed

            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(50):
                    ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409

    time.sleep(0.5)   # nginx logs a WebSocket request when it closes
    ws_routes = {up for up, uri in _routes(cluster["tmp"]) if uri == f"/ws?session={sid}"}
    assert len(ws_routes) == 1, ws_routes


def test_sessions_spread_over_replicas_and_stay_put(cluster):
    import httpx

    proxy = cluster["proxy"]
    sids = []
    with httpx.Client(base_url=f"http://{proxy}", timeout=30) as http:
        for i in range(12):                 # new sessions: no key yet, round-robin
            r = http.post("/api/sessions", files={"image": ("a.png", png(noise_image(16, 16, seed=i)), "image/png")})
            assert r.status_code == 201, r.text
            sids.append(r.json()["session"])
        for i, sid in enumerate(sids):
            for _ in range(2):
                assert http.get(f"/api/sessions/{sid}").status_code == 200
            # about half were created on the other replica: their image came through the shared store
            image = http.get(f"/api/sessions/{sid}/image")
            assert image.status_code == 200
            assert np.array_equal(np.asarray(decode_png(image.content).convert("RGB")),
                                  np.asarray(noise_image(16, 16, seed=i)))
        # a body over the service's cap is refused by the proxy already (413)
        r = http.post("/api/sessions", content=b"\0" * (33 * 1024 * 1024),
                      headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413
    time.sleep(0.3)
    routes = _routes(cluster["tmp"])
    creators = {up for up, uri in routes if uri == "/api/sessions"}
    assert creators == set(cluster["replicas"]), creators           # round-robin without a key
    owners = {}
    for sid in sids:
        ups = {up for up, uri in routes if re.match(rf"^/api/sessions/{re.escape(sid)}(/|$)", uri)}
        assert len(ups) == 1, (sid, ups)                              # sticky
        owners[sid] = ups.pop()
    assert set(owners.values()) == set(cluster["replicas"])          # hashed over both replicas
    if cluster["data_dirs"][0] != cluster["data_dirs"][1]:            # the bucket run: no local image folder
        assert not any((d / "images").exists() for d in cluster["data_dirs"])


def test_ws_session_parameter_must_match_hello(tmp_path, tiny_pipeline):
    """The server side of the routing key, without nginx (SQLite)."""
    with service(tmp_path / "data", tiny_pipeline) as client:
        with client.websocket_connect("/ws") as raw:
            ws = WS(raw)
            sid = ws.hello()["session"]
            ws.canvas(noise_image(32, 32))
        with client.websocket_connect(f"/ws?session={sid}") as raw:
            ws = WS(raw)
            for hello in ({"type": "hello", "id": "x", "protocol": 1},
                          {"type": "hello", "id": "y", "protocol": 1, "session": "A" * 22}):
                ws.send(hello)
                h, _ = ws.recv()
                assert h["type"] == "error" and h["code"] == "bad_message" and h["id"] == hello["id"]
            assert ws.hello(session=sid)["session"] == sid              # the connection still works
            h, _ = ws.recv()
            assert h["type"] == "canvas"
