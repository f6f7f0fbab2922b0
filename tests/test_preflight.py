"""`piti train --dry-run`: the memory preflight (tiny preset, fake tensors only)."""

import json

import attrs
import pytest
from click.testing import CliRunner

from piti_cli.main import cli
from tests.helpers import SMALL_ENCODER

SETS = [x for kv in SMALL_ENCODER for x in ("--set", kv)]


def _config(*overrides):
    from piti_core.config import resolve_config
    from piti_core.plugins import get_plugin_manager

    return resolve_config(preset="tiny", overrides=[*SMALL_ENCODER, *overrides],
                          extra_sections=get_plugin_manager().task_sections())


def _estimate(cfg, names=("stage1", "stage2"), **kw):
    from piti_core.train.finetune import finetune_stages
    from piti_core.train.preflight import estimate

    stages = [s for s in finetune_stages(cfg) if s.name in names]
    kw.setdefault("baseline", 0)
    kw.setdefault("available", 1 << 50)
    return estimate(cfg, stages, cond_channels=1, device="cpu", dtype="fp32", **kw)


@pytest.fixture(scope="module")
def default_estimate():
    return _estimate(_config())


def test_dry_run_prints_table_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--dry-run", "--out", str(out), *SETS])
    assert res.exit_code == 0, res.output
    for word in ("memory preflight", "stage1", "stage1-cont", "stage2", "upsampler", "weights", "activ", "peak"):
        assert word in res.output
    assert "available" in res.output and "fits" in res.output
    assert res.stdout == ""  # the table is status output (stderr); stdout carries only --json
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert list(tmp_path.iterdir()) == []


def test_dry_run_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--dry-run", "--json", "--stage", "stage2", *SETS])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"device", "dtype", "batch_size", "grad_accum", "available", "memory_kind", "peak", "verdict", "stages",
            "suggestions"} <= set(data)
    assert data["device"] == "cpu" and data["batch_size"] == 8 and data["verdict"] == "fits"
    (row,) = data["stages"]
    assert row["stage"] == "stage2" and row["trainable"] == row["params"] > 0
    parts = ("baseline", "weights", "grads", "optimizer", "ema", "activations", "transient", "extra")
    assert row["peak"] == sum(row[k] for k in parts)
    assert row["optimizer"] == 2 * row["grads"] and row["baseline"] > 0  # CPU: the process's own memory counts
    assert list(tmp_path.iterdir()) == []


def test_json_needs_dry_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--json", *SETS])
    assert res.exit_code == 2 and "--dry-run" in res.output
    assert list(tmp_path.iterdir()) == []


def test_bad_set_key_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--dry-run", "--set", "model.bogus=1"])
    assert res.exit_code == 2
    assert "unknown config key 'model.bogus'" in res.output and "Traceback" not in res.output


def test_stage1_is_smaller_than_stage2(default_estimate):
    s1, s2 = default_estimate.stages
    assert (s1.stage, s2.stage) == ("stage1", "stage2")
    assert s1.params == s2.params and s1.trainable < s2.trainable  # stage 1 freezes the decoder
    assert s1.grads < s2.grads and s1.ema < s2.ema
    assert s1.peak < s2.peak


def test_estimate_grows_with_batch_size(default_estimate):
    small = _estimate(_config("train.batch_size=2"), names=("stage1",)).stages[0]
    large = default_estimate.stages[0]
    assert (small.batch_size, large.batch_size) == (2, 8)
    assert small.weights == large.weights and small.grads == large.grads
    assert 3 * small.activations < large.activations < 5 * small.activations
    assert small.peak < large.peak
    # scaling the batch-8 count to batch 2 agrees with counting at batch 2 (the suggestions rely on it)
    for ckpt in (False, True):
        assert large.activations_at(2, ckpt) == pytest.approx(small.activations_at(2, ckpt), rel=0.02)


def test_checkpointing_lowers_activations(default_estimate):
    plain = default_estimate.stages[1]
    ckpt = _estimate(_config("model.checkpointing=true"), names=("stage2",)).stages[0]
    assert ckpt.checkpointing and not plain.checkpointing
    assert ckpt.activations < 0.8 * plain.activations
    assert ckpt.weights == plain.weights
    # the composition from one uncheckpointed pass agrees with the flag
    assert ckpt.activations == plain.activations_at(plain.batch_size, True)


def test_suggestions_when_memory_is_short(default_estimate, monkeypatch):
    from piti_core.train import preflight

    cfg = _config()
    rows = default_estimate.stages
    half = max(r.peak_at(4, False) for r in rows)
    full = max(r.peak for r in rows)
    assert half < full
    available = int((half + full) / 2 / preflight.HEADROOM)  # batch 4 fits, batch 8 does not
    result = _estimate(cfg, available=available)
    assert result.verdict in ("tight", "too-big")
    flags = [" ".join(s.flags) for s in result.suggestions]
    assert "--set train.batch_size=4 --set train.grad_accum=2" in flags
    ckpt = [f for f in flags if "model.checkpointing=true" in f]
    assert ckpt, flags
    # the suggestions really fit: re-estimate with them
    for f in flags:
        sets = f.split()[1::2]
        fixed = _estimate(_config(*sets), available=available)
        assert fixed.verdict == "fits", (f, fixed.peak, available)

    # the same through the CLI, with the device's memory faked
    monkeypatch.setattr(preflight, "device_memory", lambda device: (available, "faked"))
    monkeypatch.setattr(preflight, "runtime_baseline", lambda device, dtype: 0)
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--dry-run", "--stage", "stage2", *SETS])
    assert res.exit_code == 0, res.output  # advisory: a run that does not fit still exits 0
    assert "try: --set" in res.output and "train.grad_accum=" in res.output


def test_nothing_fits(default_estimate):
    result = _estimate(_config(), available=default_estimate.stages[0].weights)
    assert result.verdict == "too-big"
    assert len(result.suggestions) == 1 and result.suggestions[0].flags == ()
    assert "no micro-batch size fits" in result.suggestions[0].message


def test_activation_scaling_is_linear():
    from piti_core.train.activations import ActivationCount

    c = ActivationCount(plain=1000, checkpointed=400, batch_size=4, plain_per_sample=200, checkpointed_per_sample=50,
                        largest=10)
    assert c.at(4, False) == 1000 and c.at(4, True) == 400
    assert c.at(8, False) == 1800 and c.at(1, True) == 250
    assert attrs.evolve(c, plain_per_sample=0).at(8, False) == 1000
