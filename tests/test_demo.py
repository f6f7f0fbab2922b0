"""`piti demo`: the HTTP API against a server on port 0 in a thread, and one headless-Chromium run."""

import io
import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piti_core.demo.server import DemoApp, make_server
from tests.helpers import random_run

FAST = "steps=3&upsampler_steps=2&seed=1"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("run") / "sketch-tiny")[0]


class GatedApp(DemoApp):
    """Holds each generation until the test opens the gate, so queueing is checked without timing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()

    def _generate(self, job, progress):
        self.started.set()
        self.gate.wait()
        return super()._generate(job, progress)


@pytest.fixture(scope="module")
def server(run_dir):
    app = GatedApp(run_dir, device="cpu", max_upload=64 * 1024)
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    _TOKENS[base] = app.token
    yield app, base
    app.gate.set()
    srv.shutdown()
    srv.server_close()
    app.close()
    assert not app.tmp.exists()  # user files are removed with the server


def _png(size=(96, 80)) -> bytes:
    arr = np.full(size[::-1], 255, np.uint8)
    arr[30:34, 10:80] = 0
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


_TOKENS: dict[str, str] = {}  # base URL -> the server's token, which every POST sends as the page does
_PAGE_TOKEN = object()


def _call(url, data=None, token=_PAGE_TOKEN):
    """GET (or POST ``data``, with the server's token unless ``token`` says otherwise): (status, body, type)."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None and token is _PAGE_TOKEN:
        token = next(t for base, t in _TOKENS.items() if url.startswith(base + "/"))
    if data is not None and token is not None:
        req.add_header("X-Piti-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, res.read(), res.headers.get("Content-Type")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type")


def _wait(base, job):
    """Poll until the job ends (the worker's progress is the clock; no timed assertion)."""
    for _ in range(2000):
        status = json.loads(_call(f"{base}/api/jobs/{job}")[1])
        if status["state"] in ("done", "error"):
            return status
        threading.Event().wait(0.05)
    raise AssertionError(f"job {job} did not finish: {status}")


def test_page_and_info(server):
    app, base = server
    code, body, ctype = _call(base + "/")
    assert code == 200 and ctype.startswith("text/html") and b'id="draw"' in body
    info = json.loads(_call(base + "/api/info")[1])
    assert info["task"] == "sketch" and info["kind"] == "sketch" and info["models"] == ["base", "upsampler"]
    assert ".png" in info["suffixes"] and ".npy" not in info["suffixes"]  # what the sketch task reads
    assert info["defaults"]["steps"] == app.config.sample.steps


def test_generate_returns_images_of_the_run_sizes(server, run_dir):
    app, base = server
    code, body, _ = _call(f"{base}/api/generate?{FAST}&guidance=normalized&guidance_scale=2", _png())
    assert code == 202, body
    status = _wait(base, json.loads(body)["job"])
    assert status["state"] == "done", status["error"]
    assert status["settings"]["guidance"] == "normalized" and status["settings"]["steps"] == "3"
    assert "--guidance normalized" in status["command"] and "--seed 1" in status["command"]
    sizes = {}
    for name in ("condition", "base", "image"):
        code, data, ctype = _call(base + status["images"][name])
        assert code == 200 and ctype == "image/png"
        sizes[name] = Image.open(io.BytesIO(data)).size
    assert sizes["base"] == (app.config.model.image_size,) * 2
    assert sizes["image"] == (app.config.upsampler.image_size,) * 2
    code, data, _ = _call(base + status["images"]["input"])
    assert code == 200 and data == _png()


def test_shown_command_makes_the_same_image(server, tmp_path):
    import shlex

    from click.testing import CliRunner

    from piti_cli.main import cli

    _, base = server
    body = _call(f"{base}/api/generate?{FAST}&seed=5&sampler=ddim", _png())[1]
    status = _wait(base, json.loads(body)["job"])
    (tmp_path / "input.png").write_bytes(_call(base + status["images"]["input"])[1])
    args = shlex.split(status["command"])
    assert args[:2] == ["piti", "sample"]
    args[args.index("--input") + 1] = str(tmp_path / "input.png")
    res = CliRunner().invoke(cli, [*args[1:], "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    shown = np.asarray(Image.open(io.BytesIO(_call(base + status["images"]["image"])[1])))
    assert np.array_equal(shown, np.asarray(Image.open(tmp_path / "out" / "input.png")))


def test_bad_upload_type_is_refused(server):
    _, base = server
    code, body, _ = _call(f"{base}/api/generate?{FAST}", b"%PDF-1.4 not an image")
    assert code == 415 and "unsupported file type" in json.loads(body)["error"]


def test_oversized_upload_is_refused(server):
    app, base = server
    big = _png() + b"\0" * (app.max_upload + 1)
    code, body, _ = _call(f"{base}/api/generate?{FAST}", big)
    assert code == 413 and "too large" in json.loads(body)["error"]


def test_bad_settings_are_one_line_errors(server):
    _, base = server
    code, body, _ = _call(f"{base}/api/generate?sampler=magic", _png())
    assert code == 400 and "sampler must be one of" in json.loads(body)["error"]


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_an_upload_of_a_type_the_task_does_not_read_is_refused(server):
    _, base = server
    for query, body in (("", _npy(np.zeros((8, 8)))), ("&suffix=.npy", _npy(np.zeros((8, 8)))),
                        ("&suffix=.json", b'{"points": []}')):
        code, data, _ = _call(f"{base}/api/generate?{FAST}{query}", body)
        error = json.loads(data)["error"]
        assert code == 415 and "sketch" in error and ".png" in error and ".npy" not in error.split("reads")[1], error


def test_an_upload_that_is_not_the_type_it_claims_is_refused(server):
    _, base = server
    jpeg = io.BytesIO()
    Image.new("L", (16, 16), 255).save(jpeg, format="JPEG")
    code, data, _ = _call(f"{base}/api/generate?{FAST}&suffix=.png", jpeg.getvalue())
    assert code == 415 and "not a PNG" in json.loads(data)["error"] and "JPEG" in json.loads(data)["error"]
    code, data, _ = _call(f"{base}/api/generate?{FAST}&suffix=.png", b"just text")
    assert code == 415 and "not a PNG" in json.loads(data)["error"]
    code, data, _ = _call(f"{base}/api/generate?{FAST}&suffix=.jpeg", jpeg.getvalue())  # .jpeg is .jpg
    assert code == 202, data
    assert _wait(base, json.loads(data)["job"])["state"] == "done"


@pytest.fixture(scope="module")
def keypoints_server(tmp_path_factory, piti_home):
    """A run of tests/plugins/inputs_plugin.py's keypoints task (it reads .json), installed as a plugin."""
    from piti_core import plugins as plugin_module
    from piti_core.testing import FakeEntryPoints

    mp = pytest.MonkeyPatch()
    fake = FakeEntryPoints(keep_installed=True).add("inputstest", "tests.plugins.inputs_plugin",
                                                    dist="piti-task-inputs", version="1.2.0")
    mp.setattr(plugin_module, "entry_points_for_group", fake)
    plugin_module.reset_plugin_manager()
    run = random_run(tmp_path_factory.mktemp("keypoints") / "run", "keypoints", upsampler=False)[0]
    app = DemoApp(run, device="cpu")
    srv = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    _TOKENS[base] = app.token
    yield app, base
    srv.shutdown()
    srv.server_close()
    app.close()
    mp.undo()
    plugin_module.reset_plugin_manager()


def test_a_json_upload_runs_for_a_task_that_reads_json(keypoints_server):
    _, base = keypoints_server
    points = json.dumps({"points": [[0.2, 0.3], [0.7, 0.5]]}).encode()
    code, body, _ = _call(f"{base}/api/generate?{FAST}&suffix=.json", points)
    assert code == 202, body
    status = _wait(base, json.loads(body)["job"])
    assert status["state"] == "done", status["error"]
    assert status["images"]["input"].endswith("/input.json") and "--input input.json" in status["command"]
    assert _call(base + status["images"]["input"])[1] == points


def test_failing_generation_shows_its_error_and_the_server_goes_on(keypoints_server):
    app, base = keypoints_server
    code, body, _ = _call(f"{base}/api/generate?{FAST}&suffix=.json", b'{"no points": 1}')  # fails in preprocess
    assert code == 202, body
    status = _wait(base, json.loads(body)["job"])
    assert status["state"] == "error" and status["error"] and "\n" not in status["error"]
    assert status["error"].startswith("the uploaded file") and "not a keypoints file" in status["error"]
    assert str(app.tmp) not in status["error"] and "piti-demo-" not in status["error"]
    code, body, _ = _call(f"{base}/api/generate?{FAST}&suffix=.json", b'{"points": [[0.5, 0.5]]}')
    assert _wait(base, json.loads(body)["job"])["state"] == "done"


def test_a_json_task_refuses_images_and_text_that_is_not_utf8(keypoints_server):
    _, base = keypoints_server
    for query in ("", "&suffix=.png"):
        code, data, _ = _call(f"{base}/api/generate?{FAST}{query}", _png())
        assert code == 415 and "keypoints" in json.loads(data)["error"] and ".json" in json.loads(data)["error"]
    code, data, _ = _call(f"{base}/api/generate?{FAST}&suffix=.json", b'{"points": "\xff\xfe"}')
    assert code == 400 and "UTF-8" in json.loads(data)["error"]
    code, data, _ = _call(f"{base}/api/generate?{FAST}", b'{"points": []}')  # no suffix, no known type
    assert code == 415 and "suffix" in json.loads(data)["error"] and ".json" in json.loads(data)["error"]


def test_concurrent_requests_are_queued(server):
    app, base = server
    app.gate.clear()
    app.started.clear()
    try:
        first = json.loads(_call(f"{base}/api/generate?{FAST}", _png())[1])["job"]
        assert app.started.wait(60)  # the first job is running (held at the gate)
        results = []
        threads = [threading.Thread(target=lambda: results.append(_call(f"{base}/api/generate?{FAST}", _png())))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        positions = sorted(json.loads(r[1])["position"] for r in results)
        assert positions == [1, 2]
        assert json.loads(_call(f"{base}/api/jobs/{first}")[1])["state"] == "running"
    finally:
        app.gate.set()
    jobs = [first] + [json.loads(r[1])["job"] for r in results]
    assert [_wait(base, j)["state"] for j in jobs] == ["done"] * 3


def test_page_carries_the_token_and_a_post_without_it_is_refused(server):
    app, base = server
    page = _call(base + "/")[1].decode()
    assert f'<meta name="piti-token" content="{app.token}">' in page and len(app.token) >= 32
    code, body, _ = _call(f"{base}/api/generate?{FAST}", _png(), token=None)
    assert code == 403 and "X-Piti-Token" in json.loads(body)["error"]
    code, body, _ = _call(f"{base}/api/generate?{FAST}", _png(), token=app.token[::-1])
    assert code == 403


def test_requests_naming_another_host_or_origin_are_refused(server):
    _, base = server
    for headers in ({"Host": "evil.example.com"}, {"Origin": "http://evil.example.com"}):
        req = urllib.request.Request(base + "/api/info", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        assert err.value.code == 403 and "is not this server" in json.loads(err.value.read())["error"]


def test_host_check_names_this_server_only():
    from piti_core.demo.guard import HostCheck

    loop = HostCheck("127.0.0.1", 8765)
    assert all(loop(h) for h in ("127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765", "[::1]:8765"))
    assert not any(loop(h) for h in ("evil.example.com:8765", "127.0.0.1:80", "127.0.0.1", "localhost:8765x",
                                     "10.0.0.5:8765", "", None, "[::1]", "127.0.0.1:8765:8765"))
    lan = HostCheck("192.168.1.20", 8765)
    assert lan("192.168.1.20:8765") and not lan("localhost:8765") and not lan("rebound.example:8765")
    wild = HostCheck("0.0.0.0", 8765)
    assert wild("192.168.1.20:8765") and wild("localhost:8765") and wild("[fe80::1]:8765")
    assert not wild("rebound.example:8765") and not wild("192.168.1.20:9999")
    assert HostCheck("127.0.0.1", 80)("localhost")  # a browser leaves out port 80


def test_huge_pixel_count_is_refused_before_decoding(server):
    _, base = server
    buf = io.BytesIO()
    Image.new("1", (5000, 4000)).save(buf, format="PNG")  # a few kB of PNG, 20 million pixels
    code, body, _ = _call(f"{base}/api/generate?{FAST}", buf.getvalue())
    assert code == 413 and "5000×4000" in json.loads(body)["error"]


def test_bad_host_and_busy_port_get_their_own_messages(server):
    from piti_core.errors import UsageError

    app, base = server
    for host in ("999.1.1.1", "no-such-host.invalid", ""):
        with pytest.raises(UsageError, match="--host") as err:
            make_server(app, host, 0)
        assert "--port" not in str(err.value)
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(UsageError, match=f"port {port} is in use.*--port"):
        make_server(app, "127.0.0.1", port)


def test_close_stops_a_running_job_and_leaves_no_files(run_dir):
    app = GatedApp(run_dir, device="cpu")
    app.gate.clear()
    job = app.submit(_png(), app.parse_settings({"steps": ["3"], "upsampler_steps": ["2"]}))
    assert app.started.wait(60)
    app.close(wait=0.01)  # the job is held at the gate: close does not wait for it
    assert not app.tmp.exists()
    app.gate.set()  # the job goes on, writes its output folder, then stops at its first sampling step
    app.queue.close(wait=120)
    assert job.state == "error" and "shutting down" in job.error
    assert not app.tmp.exists()


def test_sigterm_stops_the_demo_and_removes_its_uploads(run_dir, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    code = "import sys; from piti_cli.main import main; sys.argv[0] = 'piti'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "demo", "--run", str(run_dir), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()  # "piti demo: run ... at http://127.0.0.1:PORT/ ..."
        base = re.search(r"http://[^/]+", line).group(0)
        token = re.search(r'name="piti-token" content="([^"]+)"', _call(base + "/")[1].decode()).group(1)
        _TOKENS[base] = token
        code_, body, _ = _call(f"{base}/api/generate?{FAST}", _png())
        assert code_ == 202, body
        assert list(tmp.glob("piti-demo-*/job-*/input.png"))  # the upload is on disk
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not list(tmp.glob("piti-demo-*"))  # (torch may leave its own caches there)


def test_cli_without_a_run_says_which_command_makes_one(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from piti_cli.main import cli

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["demo", "--port", "0"])
    assert res.exit_code == 2 and "piti train --task sketch" in res.output
    res = CliRunner().invoke(cli, ["demo", "--run", str(tmp_path / "nothing"), "--port", "0"])
    assert res.exit_code == 1 and "not a piti run directory" in res.output


def test_default_run_names_the_command(tmp_path):
    from piti_cli.commands.demo import default_run
    from piti_core.errors import UsageError

    with pytest.raises(UsageError, match="piti train --task sketch"):
        default_run(tmp_path)


MASK_CLASSES = {"classes": ["sky", "<b>grass</b> & co"], "palette": [[0, 0, 255], [0, 255, 0]]}


@pytest.fixture(scope="module")
def mask_server(tmp_path_factory):
    import torch

    from piti_core.config import resolve_config
    from piti_core.models.build import build_base
    from piti_core.plugins import PluginHost
    from piti_core.runs import save_run

    folder = tmp_path_factory.mktemp("mask")
    (folder / "classes.json").write_text(json.dumps(MASK_CLASSES))
    host = PluginHost()
    host.load_entry_points()
    cfg = resolve_config(preset="tiny", overrides=["encoder.layers=1", "encoder.width=32", "encoder.heads=2",
                                                   "encoder.cnn_channels=8,8,16,16",
                                                   f"mask.palette={folder / 'classes.json'}"],
                         extra_sections=host.task_sections())
    channels = host.task("mask").condition_spec(cfg).channels
    torch.manual_seed(0)
    save_run(folder / "run", cfg, {"base": build_base(cfg, channels)}, task="mask", cond_channels=channels,
             source="test")
    app = DemoApp(folder / "run", device="cpu")
    srv = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    _TOKENS[base] = app.token
    yield app, base
    srv.shutdown()
    srv.server_close()
    app.close()


def test_mask_run_offers_its_palette_and_paints_a_label_map(mask_server):
    app, base = mask_server
    info = json.loads(_call(base + "/api/info")[1])
    assert info["kind"] == "labels" and info["models"] == ["base"]
    assert info["class_names"] == MASK_CLASSES["classes"] and info["palette"] == MASK_CLASSES["palette"]
    arr = np.zeros((40, 40, 3), np.uint8)
    arr[:] = MASK_CLASSES["palette"][0]
    arr[20:] = MASK_CLASSES["palette"][1]  # a label map painted in the task's colours
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    status = _wait(base, json.loads(_call(f"{base}/api/generate?{FAST}", buf.getvalue())[1])["job"])
    assert status["state"] == "done", status["error"]
    image = Image.open(io.BytesIO(_call(base + status["images"]["image"])[1]))
    assert image.size == (app.config.model.image_size,) * 2  # no upsampler: the base sample is the result
    arr[0, 0] = (9, 9, 9)  # a colour outside the palette: a one-line error naming it
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    status = _wait(base, json.loads(_call(f"{base}/api/generate?{FAST}", buf.getvalue())[1])["job"])
    assert status["state"] == "error" and "(9, 9, 9)" in status["error"]


# ---------------------------------------------------------------------------------- headless Chromium
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'piti[test]')")
    if not CHROMIUM.is_file() or not Path(CHROMEDRIVER).is_file():
        pytest.skip("needs /usr/bin/chromium and chromedriver (Debian packages chromium, chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def test_browser_draw_and_generate(server):
    driver = _browser()  # skips first when selenium or Chromium is missing
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, base = server
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        canvas = driver.find_element(By.ID, "draw")
        for dy in (-40, 0, 40):  # three strokes across the canvas
            ActionChains(driver).move_to_element_with_offset(canvas, -80, dy).click_and_hold() \
                .move_by_offset(160, 10).release().perform()
        dark = driver.execute_script(
            "const d = document.getElementById('draw').getContext('2d').getImageData(0, 0, 256, 256).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] < 128; return n;")
        assert dark > 100  # the strokes are on the canvas
        for field, value in (("steps", "3"), ("upsampler_steps", "2")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text in ("done", "failed"))
        assert driver.find_element(By.ID, "error").text == ""
        size = driver.execute_script("const i = document.getElementById('img-image');"
                                     "return i.complete ? [i.naturalWidth, i.naturalHeight] : null;")
        job = driver.find_element(By.TAG_NAME, "body").get_attribute("data-job")
        png = Image.open(io.BytesIO(_call(f"{base}/api/jobs/{job}/image.png")[1]))
        assert size == list(png.size) and size[0] > 0
        assert np.asarray(png).std() > 0  # a non-empty image
        assert "piti sample --run" in driver.find_element(By.ID, "command").text
    finally:
        driver.quit()


def test_browser_shows_class_names_as_text(mask_server):
    driver = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, base = mask_server
    try:
        driver.get(base + "/")
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        buttons = driver.find_elements(By.CSS_SELECTOR, "#palette button")
        assert [b.text.strip() for b in buttons] == MASK_CLASSES["classes"]  # markup shown as text, not parsed
        assert not driver.find_elements(By.CSS_SELECTOR, "#palette b")
    finally:
        driver.quit()


def test_browser_uploads_a_json_file_with_its_suffix(keypoints_server, tmp_path):
    driver = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, base = keypoints_server
    upload = tmp_path / "pose.JSON"
    upload.write_text(json.dumps({"points": [[0.25, 0.25], [0.75, 0.5]]}))
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert driver.find_element(By.ID, "upload").get_attribute("accept") == ".json"
        driver.find_element(By.ID, "upload").send_keys(str(upload))
        driver.find_element(By.ID, "steps").clear()
        driver.find_element(By.ID, "steps").send_keys("3")
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text in ("done", "failed"))
        assert driver.find_element(By.ID, "error").text == ""
        assert "--input input.json" in driver.find_element(By.ID, "command").text
    finally:
        driver.quit()
