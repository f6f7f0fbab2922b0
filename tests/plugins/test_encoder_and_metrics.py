"""A task's own encoder is what piti builds, trains, saves, loads and samples with; metrics are plugins.

The plugin under test is tests/plugins/conv_plugin.py, seen by the CLI as an installed entry point.
"""

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from piti_cli.main import cli
from piti_core import plugins as plugin_module
from piti_core.errors import PluginError
from piti_core.testing import FakeEntryPoints, assert_task_contract
from tests.helpers import SMALL_ENCODER, one_torch_thread, random_run
from tests.plugins import conv_plugin

SHORT = ["encoder.layers=1", "encoder.cnn_channels=8,8,16,16", "train.stage1_steps=2", "train.stage1_cont_steps=1",
         "train.stage2_steps=1", "train.upsampler_steps=1", "train.batch_size=2", "train.perceptual=none",
         "data.toyworld_samples=8", "data.val_fraction=0.5"]


def _sets(pairs):
    return [a for kv in pairs for a in ("--set", kv)]


@pytest.fixture(scope="module", autouse=True)
def installed(piti_home):
    """conv_plugin as an installed plugin next to the real ones, for the whole module."""
    mp = pytest.MonkeyPatch()
    fake = FakeEntryPoints(keep_installed=True).add("convtest", "tests.plugins.conv_plugin", dist="piti-convtest")
    mp.setattr(plugin_module, "entry_points_for_group", fake)
    plugin_module.reset_plugin_manager()
    with one_torch_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy metric (tested on its own below)
        yield plugin_module.get_plugin_manager()
    mp.undo()
    plugin_module.reset_plugin_manager()


@pytest.fixture
def cfg(installed):
    from piti_core.config import resolve_config

    return resolve_config(preset="tiny", overrides=SMALL_ENCODER, extra_sections=installed.task_sections())


# ------------------------------------------------------------------------------------------ encoder
def test_models_are_built_with_the_tasks_encoder(installed, cfg):
    from piti_core.models.build import build_model

    task = installed.task("convsketch")
    for name in ("base", "upsampler"):
        model = build_model(name, cfg, 1, task=task)
        assert isinstance(model.encoder, conv_plugin.ConvPoolEncoder), name
        tokens, pooled = model.encode(torch.zeros(2, 1, cfg.encoder.cond_size, cfg.encoder.cond_size))
        assert tokens.shape == (2, 9, cfg.encoder.width)  # grid 3 from the task's own options


def test_the_decoder_form_builds_one_encoder_per_decoder(installed, cfg):
    from piti_core.models.build import build_base, build_upsampler

    task = installed.task("convsketch2")
    type(task).calls.clear()
    base, up = build_base(cfg, 1, task=task), build_upsampler(cfg, 1, task=task)
    assert type(task).calls == [cfg.model.image_size, cfg.upsampler.image_size]
    assert base.encoder.pool.output_size != up.encoder.pool.output_size


class _BadWidth(conv_plugin.ConvSketchTask):
    name = "badwidth"

    def build_encoder(self, cfg):
        return conv_plugin.ConvPoolEncoder(1, cfg.encoder.width + 1, 2)


class _NotATuple(conv_plugin.ConvSketchTask):
    name = "notatuple"

    def build_encoder(self, cfg):
        return torch.nn.Conv2d(1, cfg.encoder.width, 3)


@pytest.mark.parametrize("task, words", [(_BadWidth(), ["badwidth", "tokens", "width"]),
                                          (_NotATuple(), ["notatuple", "a tensor of shape", "tuple (tokens"])])
def test_an_encoder_the_decoder_cannot_read_is_a_plugin_error(task, words, cfg):
    from piti_core.models.build import build_model

    with pytest.raises(PluginError) as err:
        build_model("base", cfg, 1, task=task)
    assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(PluginError, match=task.name):
        assert_task_contract(task, cfg)


def test_a_different_architecture_passes_the_contract(installed, cfg):
    assert_task_contract(installed.task("convsketch"), cfg)


@pytest.fixture(scope="module")
def conv_run(installed, tmp_path_factory):
    run = tmp_path_factory.mktemp("conv") / "run"
    res = CliRunner().invoke(cli, ["train", "--task", "convsketch", "--preset", "tiny", "--out", str(run),
                                   "--no-preview", *_sets([*SHORT, "convsketch.grid=2"])])
    assert res.exit_code == 0, res.output
    return run


def test_the_memory_preflight_builds_the_tasks_encoder(installed, cfg, monkeypatch):
    from piti_core.train import preflight
    from piti_core.train.finetune import finetune_stages

    built = []
    original = preflight.build_fake
    monkeypatch.setattr(preflight, "build_fake", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    result = preflight.estimate(cfg, finetune_stages(cfg)[:1], cond_channels=1, available=2**40,
                                task=installed.task("convsketch"))
    assert result.stages[0].params > 0
    assert [type(m.encoder) for m in built] == [conv_plugin.ConvPoolEncoder]


def test_dry_run_works_with_the_tasks_encoder(installed):
    res = CliRunner().invoke(cli, ["train", "--task", "convsketch", "--preset", "tiny", "--dry-run", "--json",
                                   *_sets([*SHORT, "convsketch.grid=2"])])
    assert res.exit_code == 0, res.output
    assert [s["stage"] for s in json.loads(res.stdout)["stages"]] == ["stage1", "stage1-cont", "stage2", "upsampler"]


def test_trains_saves_loads_and_samples_with_its_own_encoder(conv_run, tmp_path):
    from piti_core.runs import load_run

    config = json.loads((conv_run / "config.json").read_text())
    section = config.get("tasks", {}).get("convsketch") or config["convsketch"]  # [tasks.NAME] or the older [NAME]
    assert section["grid"] == 2  # the encoder's configuration is in config.json
    saved = load_file(str(conv_run / "base.safetensors"))
    assert {k for k in saved if k.startswith("encoder.")} == {"encoder.conv.weight", "encoder.conv.bias",
                                                               "encoder.proj.weight", "encoder.proj.bias"}
    run = load_run(conv_run)
    for name in ("base", "upsampler"):
        enc = run.models[name].encoder
        assert type(enc) is conv_plugin.ConvPoolEncoder and enc.pool.output_size == 2
    assert torch.equal(run.models["base"].encoder.conv.weight, saved["encoder.conv.weight"])

    from PIL import Image

    sketch = tmp_path / "s.png"
    img = Image.new("L", (40, 40), 255)
    img.paste(0, (5, 18, 35, 21))
    img.save(sketch)
    res = CliRunner().invoke(cli, ["sample", "--run", str(conv_run), "--input", str(sketch), "--out",
                                   str(tmp_path / "out"), "--steps", "2", "--upsampler-steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs"]


# ------------------------------------------------------------------------------------------ metrics
@pytest.fixture(scope="module")
def sketch_run(installed, tmp_path_factory):
    overrides = ["data.toyworld_samples=8", "data.val_fraction=0.5"]
    return random_run(tmp_path_factory.mktemp("metrics") / "sketch", overrides=overrides)[0]


def _eval(run, out, *extra):
    return CliRunner().invoke(cli, ["eval", "--run", str(run), "--out", str(out), "--steps", "2",
                                    "--upsampler-steps", "2", "--batch-size", "2", "--n", "2", "--no-fid",
                                    "--json", *extra])


def test_plugin_metrics_run_with_their_declared_direction(sketch_run, tmp_path):
    res = _eval(sketch_run, tmp_path / "all")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    m, info = record["metrics"], record["metric_info"]
    assert 0 <= m["mean-brightness"] <= 1
    assert info["mean-brightness"]["better"] == "higher"
    assert info["edge_f1"]["better"] == "higher" and info["chamfer"]["better"] == "lower"  # SketchTask declares them
    assert "mask-only" not in record["metric_plugins"]  # a metric for another task is not run
    assert m["legacy_psnr"] == 10.0 and info["legacy_psnr"]["better"] == "higher"  # legacy form, direction guessed
    assert m["fid"] is None and info["fid"]["note"] == "skipped (--no-fid)"  # today's entries stay
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["metric_info"] == info
    assert "mean brightness" in (tmp_path / "all" / "report.html").read_text()


def test_metric_chooses_what_runs(sketch_run, tmp_path):
    res = _eval(sketch_run, tmp_path / "one", "--metric", "mean-brightness", "--metric", "alignment")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["metric_plugins"] == ["alignment", "mean-brightness"]
    assert set(record["metrics"]) == {"edge_f1", "chamfer", "mean-brightness"}


@pytest.mark.parametrize("name, words", [("nope", ["unknown metric 'nope'", "fid", "mean-brightness"]),
                                         ("mask-only", ["'mask-only'", "not 'sketch'", "alignment"])])
def test_a_metric_that_cannot_run_is_one_usage_line(sketch_run, tmp_path, name, words):
    from tests.hostile.harness import assert_clean_failure, snapshot

    before = snapshot(sketch_run / "run.json", sketch_run / "config.json")
    res = CliRunner().invoke(cli, ["eval", "--run", str(sketch_run), "--out", str(tmp_path / "x"), "--no-fid",
                                   "--metric", name])
    assert_clean_failure(res, 2, mentions=words, watched=before,
                         watched_paths=[sketch_run / "run.json", sketch_run / "config.json"])
    assert not (tmp_path / "x").exists()


def test_legacy_registration_warns_and_wraps(piti_host):
    from piti_core.metrics import LegacyMetric

    with pytest.warns(DeprecationWarning, match="legacy_psnr.*deprecated"):
        piti_host.add_plugin(conv_plugin, "convtest-again")
    metric = piti_host.metrics["legacy_psnr"]
    assert isinstance(metric, LegacyMetric) and metric.direction == "higher" and metric.applies_to("mask")


@pytest.mark.parametrize("attrs_, words", [({"direction": "up"}, ["direction", "'up'"]),
                                           ({"needs": frozenset({"pixels"})}, ["needs", "pixels"]),
                                           ({"tasks": "sketch"}, ["tasks"])])
def test_a_badly_declared_metric_is_a_plugin_failure(piti_host, attrs_, words):
    from piti_core.hookspecs import hookimpl
    from piti_core.metrics import Metric

    bad = type("Bad", (Metric,), {"name": "bad", "direction": "lower", **attrs_})

    class Plugin:
        @hookimpl
        def register_metrics(register):
            register(bad())

    record = piti_host.add_plugin(Plugin, "badmetric")
    assert record.status == "error" and all(w in record.message for w in words), record.message
    assert "bad" not in piti_host.metrics


def test_a_task_declares_its_alignment_directions():
    from piti_core.metrics import alignment_direction
    from piti_core.tasks import Task

    class Declares(Task):
        alignment_directions = {"score_err": "higher"}  # the name alone would say lower

    assert alignment_direction(Declares(), "score_err") == "higher"
    assert alignment_direction(Declares(), "abs_rel") == "lower" and alignment_direction(Task(), "zzz") == ""
    assert alignment_direction(conv_plugin.ConvSketchTask(), "chamfer") == "lower"


def test_a_failing_legacy_metric_is_reported_not_raised(cfg):
    from piti_core.metrics import EvalContext, LegacyMetric, MetricBatch, MetricValue

    def broken(samples):  # an old signature piti never called
        return 1.0

    metric = LegacyMetric("old_mae", broken)
    ctx = EvalContext(task=None, cfg=cfg, n=2, resolution=8, device="cpu", toy_world=False)
    state = metric.update(metric.start(ctx), MetricBatch(samples=torch.zeros(2, 3, 8, 8), batch={}), ctx)
    result = metric.finalize(state, ctx)
    assert isinstance(result, MetricValue) and result.value is None and "TypeError" in result.note
    assert metric.direction == "lower"
