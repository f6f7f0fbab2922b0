"""Hostile inputs against `piti demo`: its HTTP API on a real server (127.0.0.1, port 0) and its options.

Every HTTP case checks the status code, a one-line JSON error, that the server still answers afterwards
and that nothing outside the demo's temporary folder was written (the run, the working folder and the
temporary root are hashed before and after). Accepted uploads never sample here: the app's generation
fails at once, naming the uploaded file by its server path, which the job's error must not show.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piti_core.demo.server import DemoApp, make_server
from piti_core.errors import DataError
from tests.helpers import random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot

FAST = "steps=3&upsampler_steps=2&seed=1"


class FailingApp(DemoApp):
    """Never samples: a job fails at once with an error that names the upload by its server path."""

    def _generate(self, job, progress):
        path = self._job_dir(job) / f"input{job.payload['suffix']}"
        raise DataError(f"{path}: not an image file PIL can read; replace it with a PNG/JPEG or remove it")


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The server, its app, the temporary root it writes under, the working folder and its log lines."""
    root = tmp_path_factory.mktemp("demo")
    run_dir = random_run(root / "runs" / "sketch-tiny")[0]
    mp = pytest.MonkeyPatch()
    (root / "tmp").mkdir()
    mp.setattr(tempfile, "tempdir", str(root / "tmp"))
    mp.chdir(root)
    logger, log = logging.getLogger("piti.demo"), ListHandler()
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    app = FailingApp(run_dir, device="cpu", max_upload=64 * 1024)
    srv = make_server(app, "127.0.0.1", 0, timeout=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    yield {"app": app, "server": srv, "port": port, "root": root, "run": run_dir, "log": log.lines}
    srv.shutdown()
    srv.server_close()
    app.close()
    logger.removeHandler(log)
    logger.setLevel(level)
    mp.undo()


# ---------------------------------------------------------------------------------- raw HTTP
class Response:
    def __init__(self, data: bytes):
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


def _token(d) -> str:
    return getattr(d["app"], "token", "")


def send(d, method="GET", path="/api/info", *, host="127.0.0.1:{port}", origin=None, token="valid",
         body=b"", headers=(), raw: bytes | None = None) -> Response:
    """One request on a fresh connection (the server answers and closes it)."""
    if raw is None:
        lines = [f"{method} {path} HTTP/1.1"]
        if host is not None:
            lines.append("Host: " + host.format(port=d["port"]))
        if origin is not None:
            lines.append("Origin: " + origin.format(port=d["port"]))
        if method == "POST" and token is not None:
            lines.append("X-Piti-Token: " + (_token(d) if token == "valid" else token))
        if method == "POST" and not any(h.lower().startswith("content-length") for h in headers):
            lines.append(f"Content-Length: {len(body)}")
        lines += [*headers, "Connection: close", "", ""]
        raw = "\r\n".join(lines).encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", d["port"]), timeout=30) as sock:
        sock.sendall(raw)
        return Response(_read_all(sock))


def _read_all(sock) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _png(size=(96, 80)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], 255, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _noise_png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` grey pixels whose data is one empty zlib stream (a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _bmp_header(width: int, height: int) -> bytes:
    return (struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0) + b"\0" * 16)


def _npy(shape, dtype="|u1", data=b"\0" * 16) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _npy_objects() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- checks
def _outside(d) -> dict[str, str]:
    """Hashes of every file the demo must not touch: the run, the working folder, the temp root but the app's."""
    files = snapshot(d["root"])
    tmp = str(d["app"].tmp)
    return {k: v for k, v in files.items() if not k.startswith(tmp)}


def _job_dirs(d) -> list[str]:
    return sorted(p.name for p in d["app"].tmp.glob("job-*"))


def assert_json_error(res: Response, status: int, *words: str) -> str:
    assert res.status == status, res
    assert res.headers.get("content-type", "").startswith("application/json"), res
    text = res.body.decode()
    assert "\n" not in text.strip(), res
    error = json.loads(text)["error"]
    assert error and "\n" not in error and "Traceback" not in error, res
    for word in words:
        assert word.lower() in error.lower(), f"{word!r} not in: {error}"
    return error


def assert_healthy(d) -> None:
    res = send(d)
    assert res.status == 200 and json.loads(res.body)["task"] == "sketch", res


@pytest.fixture
def guarded(demo):
    """Around an HTTP case: nothing written outside the demo's folder, no job queued, the server healthy."""
    before, jobs, logged = _outside(demo), _job_dirs(demo), len(demo["log"])
    yield demo
    assert _outside(demo) == before, "a file outside the demo's temporary folder was written or removed"
    assert _job_dirs(demo) == jobs, "a refused request queued a job"
    assert all("\n" not in line for line in demo["log"][logged:])
    assert_healthy(demo)


# ---------------------------------------------------------------------------------- the corpus
GEN = f"/api/generate?{FAST}"

CASES = [
    # who may call: Host, Origin, token (CSRF and DNS rebinding)
    pytest.param(dict(host="evil.example.com:{port}"), 403, ["host"], id="get-foreign-host"),
    pytest.param(dict(host="evil.example.com"), 403, ["host"], id="get-foreign-host-no-port"),
    pytest.param(dict(host="127.0.0.1:1"), 403, ["host"], id="get-wrong-port"),
    pytest.param(dict(raw=b"GET /api/info HTTP/1.0\r\n\r\n"), 403, ["host"], id="get-no-host"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), host="rebound.example:{port}"), 403, ["host"],
                 id="post-rebound-host"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), origin="http://evil.example.com"), 403, ["origin"],
                 id="post-cross-origin"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), origin="null"), 403, ["origin"], id="post-null-origin"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), origin="http://127.0.0.1:1"), 403, ["origin"],
                 id="post-other-port-origin"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), token=None), 403, ["token"], id="post-no-token"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), token="0" * 43), 403, ["token"], id="post-wrong-token"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), token="é\u00ff"), 403, ["token"],
                 id="post-non-ascii-token"),
    # what is uploaded
    pytest.param(dict(method="POST", path=GEN, body=_png_header(10000, 10000)), 413, ["pixels", "10000"],
                 id="png-10000x10000"),
    pytest.param(dict(method="POST", path=GEN, body=_bmp_header(20000, 20000)), 413, ["pixels"],
                 id="bmp-20000x20000"),
    pytest.param(dict(method="POST", path=GEN, body=_noise_png()[:2000]), 400, ["truncated or corrupt"],
                 id="truncated-png"),
    pytest.param(dict(method="POST", path=GEN, body=b"\x89PNG\r\n\x1a\n" + b"broken"), 400, ["truncated or corrupt"],
                 id="png-magic-only"),
    pytest.param(dict(method="POST", path=GEN, body=b"%PDF-1.4 not an image"), 415, ["unsupported file type"],
                 id="non-image-bytes"),
    pytest.param(dict(method="POST", path=GEN, body=_npy((100000, 100000))), 413, ["pixels"], id="npy-huge-shape"),
    pytest.param(dict(method="POST", path=GEN, body=_npy((64, 64))), 400, [".npy", "truncated"],
                 id="npy-short-data"),
    pytest.param(dict(method="POST", path=GEN, body=_npy_objects()), 415, ["objects"], id="npy-pickled-objects"),
    pytest.param(dict(method="POST", path=GEN, body=_png() + b"\0" * (64 * 1024)), 413, ["too large"],
                 id="oversize-body"),
    pytest.param(dict(method="POST", path=GEN, body=_png(), headers=["Content-Length: 12abc"]), 400,
                 ["content-length"], id="content-length-not-a-number"),
    pytest.param(dict(method="POST", path=GEN, body=b"", headers=["Content-Length: -5"]), 400,
                 ["content-length"], id="content-length-negative"),
    pytest.param(dict(method="POST", path=GEN, body=b""), 400, ["empty upload"], id="empty-body"),
    # the suffix the client names: only ever a suffix the task reads, matching the bytes
    pytest.param(dict(method="POST", path=GEN + "&suffix=..%2Fx", body=_png()), 400, ["bad suffix"],
                 id="suffix-traversal"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.PNG.exe", body=_png()), 400, ["bad suffix"],
                 id="suffix-double"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.abcdefghi", body=_png()), 400, ["bad suffix"],
                 id="suffix-too-long"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=%2Fetc%2Fpasswd", body=_png()), 400, ["bad suffix"],
                 id="suffix-absolute-path"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.p%00ng", body=_png()), 400, ["bad suffix"],
                 id="suffix-nul"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.json", body=b'{"points": []}'), 415,
                 ["sketch", "does not read .json", ".png"], id="json-for-a-sketch-task"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.npy", body=_npy((4, 4))), 415, ["does not read .npy"],
                 id="npy-suffix-for-a-sketch-task"),
    pytest.param(dict(method="POST", path=GEN, body=_npy((4, 4))), 415, ["does not read .npy", ".png"],
                 id="npy-bytes-for-a-sketch-task"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.png", body=b"\xff\xd8\xff\xe0 a JPEG"), 415,
                 ["not a png", "jpeg"], id="jpeg-claiming-png"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.png", body=b"MZ\x90\x00 an executable"), 415,
                 ["not a png"], id="exe-claiming-png"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.png", body=_noise_png()[:2000]), 400,
                 ["truncated or corrupt"], id="truncated-png-claiming-png"),
    pytest.param(dict(method="POST", path=GEN + "&suffix=.png", body=_png_header(10000, 10000)), 413,
                 ["pixels"], id="huge-png-claiming-png"),
    # the settings in the query string
    pytest.param(dict(method="POST", path=GEN + "&guidance_scale=-1", body=_png()), 400, ["guidance_scale"],
                 id="negative-guidance-scale"),
    pytest.param(dict(method="POST", path=GEN + "&guidance_scale=nan", body=_png()), 400, ["guidance_scale"],
                 id="nan-guidance-scale"),
    pytest.param(dict(method="POST", path=GEN + "&guidance_scale=inf", body=_png()), 400, ["guidance_scale"],
                 id="inf-guidance-scale"),
    pytest.param(dict(method="POST", path=GEN + "&seed=" + "9" * 30, body=_png()), 400, ["seed"], id="huge-seed"),
    pytest.param(dict(method="POST", path=GEN + "&seed=-1", body=_png()), 400, ["seed"], id="negative-seed"),
    pytest.param(dict(method="POST", path=GEN + "&sampler=magic", body=_png()), 400, ["sampler must be one of"],
                 id="unknown-sampler"),
    pytest.param(dict(method="POST", path=GEN + "&steps=0", body=_png()), 400, ["steps"], id="zero-steps"),
    pytest.param(dict(method="POST", path=GEN + "&steps=..%2F..%2Fetc", body=_png()), 400, ["steps"],
                 id="traversal-in-steps"),
    pytest.param(dict(method="POST", path=GEN + "&sampler=..%2F..%2Fetc%2Fpasswd", body=_png()), 400, ["sampler"],
                 id="traversal-in-sampler"),
    pytest.param(dict(method="POST", path=GEN + "&out=..%2F..%2Fescaped", body=_png()), 400, ["unknown setting"],
                 id="traversal-in-unknown-field"),
    # paths in the URL
    pytest.param(dict(path="/../../etc/passwd"), 404, ["not found"], id="url-traversal"),
    pytest.param(dict(path="/api/jobs/1/..%2F..%2F..%2Fetc%2Fpasswd"), 404, ["not found"], id="url-job-traversal"),
    pytest.param(dict(path="/static/../server.py"), 404, ["not found"], id="url-static-traversal"),
    pytest.param(dict(method="POST", path="/api/generate/../../x", body=_png()), 404, ["not found"],
                 id="post-url-traversal"),
    # the request itself
    pytest.param(dict(method="PUT", path="/api/generate", body=b"x"), 501, ["PUT"], id="unsupported-method"),
    pytest.param(dict(raw=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"), 400, ["bad request"],
                 id="tls-hello-on-http"),
]


@pytest.mark.parametrize(("request_args", "status", "words"), CASES)
def test_hostile_request_is_refused(guarded, request_args, status, words):
    logged = len(guarded["log"])
    assert_json_error(send(guarded, **request_args), status, *words)
    if status == 403:  # a refusal is logged, as one line naming what was refused
        assert any("refused" in line for line in guarded["log"][logged:]), guarded["log"][logged:]


def test_job_error_names_the_upload_not_the_server_path(demo):
    res = send(demo, "POST", GEN, body=_png())
    assert res.status == 202, res
    job = json.loads(res.body)["job"]
    for _ in range(2000):
        status = json.loads(send(demo, path=f"/api/jobs/{job}").body)
        if status["state"] == "error":
            break
        threading.Event().wait(0.02)
    assert status["state"] == "error", status
    assert "the uploaded file" in status["error"]
    assert str(demo["app"].tmp) not in json.dumps(status) and "piti-demo-" not in status["error"]


def test_stalled_upload_times_out(guarded):
    """Slowloris: headers and a few bytes of a 1000-byte body, then nothing; the server answers 408."""
    head = (f"POST {GEN} HTTP/1.1\r\nHost: 127.0.0.1:{guarded['port']}\r\nX-Piti-Token: {_token(guarded)}\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=30) as sock:
        sock.sendall(head + _png()[:10])
        res = Response(_read_all(sock))
    assert_json_error(res, 408, "timed out")


def test_stalled_headers_time_out(guarded):
    logged = len(guarded["log"])
    with socket.create_connection(("127.0.0.1", guarded["port"]), timeout=30) as sock:
        sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1")
        assert _read_all(sock) == b""  # the server gave up on the request and closed the connection
    lines = _wait_for_log(guarded, logged)
    assert len(lines) == 1 and "timed out" in lines[0], lines


def _wait_for_log(d, logged: int) -> list[str]:
    """The log lines written after the first ``logged`` (waits for at least one; the server's clock)."""
    for _ in range(1000):
        if len(d["log"]) > logged:
            break
        threading.Event().wait(0.02)
    return d["log"][logged:]


def test_disconnect_mid_upload_logs_one_line(guarded, capfd):
    logged = len(guarded["log"])
    head = (f"POST {GEN} HTTP/1.1\r\nHost: 127.0.0.1:{guarded['port']}\r\nX-Piti-Token: {_token(guarded)}\r\n"
            "Content-Length: 50000\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", guarded["port"]), timeout=30)
    sock.sendall(head + _png())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    sock.close()
    lines = _wait_for_log(guarded, logged)
    assert len(lines) == 1 and "disconnected" in lines[0], lines
    assert "Traceback" not in capfd.readouterr().err


def test_broken_pipe_while_answering_logs_one_line(demo, capfd):
    logged = len(demo["log"])
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        demo["server"].handle_error(None, ("127.0.0.1", 50000))
    assert len(demo["log"]) == logged + 1 and "disconnected" in demo["log"][-1]
    err = capfd.readouterr().err  # the CLI's log handler, when a test installed it, shows that one line
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err


def test_connections_beyond_the_cap_get_503(demo):
    srv = make_server(demo["app"], "127.0.0.1", 0, timeout=60, max_connections=2)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    d = {**demo, "port": srv.server_address[1]}
    stalled = [socket.create_connection(("127.0.0.1", d["port"]), timeout=30) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(b"GET /api/info HTTP/1.1\r\n")  # held open: the request never ends
        assert_json_error(send(d), 503, "busy")
    finally:
        for sock in stalled:
            sock.close()
    for _ in range(1000):  # the held connections end when their clients leave
        if send(d).status == 200:
            break
        threading.Event().wait(0.02)
    assert_healthy(d)
    srv.shutdown()
    srv.server_close()


# ---------------------------------------------------------------------------------- `piti demo` options
def test_cli_host_not_an_address(demo):
    res = invoke("demo", "--run", demo["run"], "--host", "999.1.1.1", "--port", "0")
    line = assert_clean_failure(res, 2, mentions=["--host", "999.1.1.1"])
    assert "--port" not in line


def test_cli_host_unresolvable(demo):
    res = invoke("demo", "--run", demo["run"], "--host", "no-such-host.invalid", "--port", "0")
    line = assert_clean_failure(res, 2, mentions=["--host", "no-such-host.invalid"])
    assert "--port" not in line


def test_cli_host_empty(demo):
    res = invoke("demo", "--run", demo["run"], "--host", "", "--port", "0")
    assert_clean_failure(res, 2, mentions=["--host"])


def test_cli_port_in_use(demo):
    res = invoke("demo", "--run", demo["run"], "--port", str(demo["port"]))
    assert_clean_failure(res, 2, mentions=["--port", str(demo["port"])])


def test_cli_run_missing(demo, tmp_path):
    res = invoke("demo", "--run", tmp_path / "nothing", "--port", "0")
    assert_clean_failure(res, 1, mentions=["not a piti run directory"])


def test_cli_run_is_a_file(demo, tmp_path):
    (tmp_path / "run.json").write_text("{}")
    watched = snapshot(tmp_path)
    res = invoke("demo", "--run", tmp_path / "run.json", "--port", "0")
    assert_clean_failure(res, 2, mentions=["--run"], watched=watched, watched_paths=[tmp_path])


def test_cli_run_with_broken_run_json(demo, tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    watched = snapshot(tmp_path)
    res = invoke("demo", "--run", tmp_path, "--port", "0")
    assert_clean_failure(res, 1, mentions=["run.json"], watched=watched, watched_paths=[tmp_path])


def test_temp_root_is_the_tests(demo):
    """The corpus's 'nothing written outside' check covers the temporary root the app really uses."""
    assert Path(demo["app"].tmp).parent == demo["root"] / "tmp"
