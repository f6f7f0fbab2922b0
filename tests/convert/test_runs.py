"""Run directories (piti_core.runs) and ``piti convert`` on small official-format checkpoints."""

import json

import pytest
import torch
from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.config import resolve_config
from piti_core.convert import convert_checkpoints, load_official
from piti_core.errors import CheckpointError, UsageError
from piti_core.models import build_base
from piti_core.runs import load_run, read_run_meta, save_run


def _glide_format(sd):
    """GLIDE's layout: the decoder without prefix, plus a text side that the converter drops."""
    out = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    out.update({"token_embedding.weight": torch.zeros(50, 64), "positional_embedding": torch.zeros(8, 64),
                "padding_embedding": torch.zeros(8, 64), "final_ln.weight": torch.ones(64),
                "final_ln.bias": torch.zeros(64), "transformer.resblocks.0.ln_1.weight": torch.ones(64)})
    return out


@pytest.fixture
def checkpoints(tmp_path, make_official_sd):
    sds = {"base": make_official_sd("base", 3, seed=0), "upsampler": make_official_sd("upsampler", 3, seed=1)}
    paths = {}
    for kind, sd in sds.items():
        paths[kind] = tmp_path / f"{kind}_mask.pt"
        torch.save(sd, paths[kind])
        paths[f"glide_{kind}"] = tmp_path / f"glide_{kind}.pt"
        torch.save(_glide_format(sd), paths[f"glide_{kind}"])
    return sds, paths


def _inputs(size, low=None):
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 3, size, size, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    low_res = torch.randn(2, 3, low, low, generator=g) if low else None
    return x, torch.tensor([3.0, 700.0]), cond, low_res


def test_convert_official_roundtrip(tmp_path, checkpoints):
    sds, paths = checkpoints
    run = convert_checkpoints(tmp_path / "run", base=paths["base"], upsampler=paths["upsampler"], task="mask",
                              cond_channels=3)
    meta = json.loads((run / "run.json").read_text())
    assert meta["format"] == "piti-run" and meta["version"] == 1 and meta["source"] == "convert"
    assert meta["task"] == "mask" and meta["cond_channels"] == 3 and meta["origin"] == "piti"
    assert meta["models"] == {"base": "base.safetensors", "upsampler": "upsampler.safetensors"}
    loaded = load_run(run)
    assert loaded.config.task == "mask" and loaded.config.model.channel_mult == (1, 2)
    assert loaded.config.upsampler.channel_mult == (1, 1, 2) and loaded.config.encoder.width == 64
    for kind, size, low in (("base", 16, None), ("upsampler", 32, 16)):
        ref = load_official(sds[kind], kind)
        x, t, cond, low_res = _inputs(size, low)
        with torch.no_grad():
            torch.testing.assert_close(loaded.models[kind](x, t, cond, low_res), ref(x, t, cond, low_res))
    assert list(load_run(run, ["upsampler"]).models) == ["upsampler"]


def test_refuses_overwrite_and_wrong_task(tmp_path, checkpoints):
    _, paths = checkpoints
    out = tmp_path / "run"
    convert_checkpoints(out, base=paths["base"], task="mask")
    with pytest.raises(UsageError, match="--overwrite"):
        convert_checkpoints(out, base=paths["base"], task="mask")
    convert_checkpoints(out, base=paths["base"], task="mask", overwrite=True)
    with pytest.raises(CheckpointError, match="3-channel conditions but task 'sketch' gives 1"):
        convert_checkpoints(tmp_path / "other", base=paths["base"], task="sketch", cond_channels=1)


def test_convert_glide_keeps_decoder_new_encoder(tmp_path, checkpoints):
    sds, paths = checkpoints
    run = convert_checkpoints(tmp_path / "g", base=paths["glide_base"], upsampler=paths["glide_upsampler"],
                              task="sketch", glide=True, cond_channels=1, seed=7)
    loaded = load_run(run)
    assert loaded.meta["origin"] == "glide" and loaded.meta["cond_channels"] == 1
    base = loaded.models["base"]
    assert base.encoder.cnn.conv1.weight.shape[1] == 1
    assert base.encoder.width == 64  # the width transformer_proj takes
    torch.testing.assert_close(base.decoder.out[2].weight, sds["base"]["decoder.out.2.weight"])
    qkv = sds["base"]["decoder.middle_block.1.qkv.weight"]
    assert not torch.equal(base.decoder.middle_block[1].qkv.weight, qkv[..., 0])  # reordered, not copied
    with pytest.raises(CheckpointError, match="PITI checkpoint"):
        convert_checkpoints(tmp_path / "h", base=paths["base"], task="sketch", glide=True, cond_channels=1)


def test_bad_files_and_run_dirs(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        convert_checkpoints(tmp_path / "r", base=bad, task="mask")
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_checkpoints(tmp_path / "r", base=tmp_path / "missing.pt", task="mask")
    with pytest.raises(CheckpointError, match="not a piti run directory"):
        load_run(tmp_path)
    cfg = resolve_config(preset="tiny", overrides=["encoder.cond_size=32"])
    run = save_run(tmp_path / "ok", cfg, {"base": build_base(cfg, 3)}, task="mask", cond_channels=3, source="train")
    assert read_run_meta(run)["source"] == "train"
    (run / "base.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="base.safetensors"):
        load_run(run)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(dict(meta, version=99)))
    with pytest.raises(CheckpointError, match="version 99"):
        load_run(run)


def test_saved_weights_must_fit_the_config(tmp_path):
    cfg = resolve_config(preset="tiny", overrides=["encoder.cond_size=32"])
    run = save_run(tmp_path / "r", cfg, {"base": build_base(cfg, 3)}, task="mask", cond_channels=3, source="train")
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(dict(meta, cond_channels=1)))
    with pytest.raises(CheckpointError, match=r"conv1\.weight.*\[16, 3, 7, 7\].*\[16, 1, 7, 7\]"):
        load_run(run)


def test_cli_convert(tmp_path, checkpoints):
    _, paths = checkpoints
    out = tmp_path / "cli-run"
    runner = CliRunner()
    args = ["convert", "--base", str(paths["base"]), "--task", "mask", "--set", "mask.encoding=rgb",
            "--out", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    again = runner.invoke(cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    result = runner.invoke(cli, args + ["--overwrite", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["models"] == {"base": "base.safetensors"}
    assert load_run(out).config.task_options("mask").encoding == "rgb"  # the task's options are kept
    onehot = runner.invoke(cli, ["convert", "--base", str(paths["base"]), "--task", "mask", "--out",
                                 str(tmp_path / "o")])
    assert onehot.exit_code == 1 and "mask.encoding=rgb" in onehot.output
    wrong = runner.invoke(cli, ["convert", "--base", str(paths["base"]), "--task", "sketch", "--out",
                                str(tmp_path / "x")])
    assert wrong.exit_code == 1 and "task 'sketch' gives 1" in wrong.output
    glide = runner.invoke(cli, ["convert", "--glide", "--base", str(paths["glide_base"]), "--task", "sketch",
                                "--out", str(tmp_path / "g")])
    assert glide.exit_code == 0, glide.output
    assert read_run_meta(tmp_path / "g")["cond_channels"] == 1  # from the sketch task
    none = runner.invoke(cli, ["convert", "--task", "mask", "--out", str(tmp_path / "n")])
    assert none.exit_code == 2 and "--base" in none.output


# ------------------------------------------------------------------------ the plugins a run records
LOWRES_PLUGIN = '''
import attrs
from piti_core.hookspecs import hookimpl
from piti_core.tasks import ConditionSpec, Task


@attrs.frozen
class LowresOptions:
    factor: int = 4


class LowresTask(Task):
    name = "lowres"
    description = "low-resolution photo to photo"
    sources = ("image",)
    config_class = LowresOptions

    def condition_spec(self, cfg):
        return ConditionSpec(channels=3, value_range=(-1.0, 1.0))


@hookimpl
def register_tasks(register):
    register(LowresTask())


@hookimpl
def register_samplers(register):
    register("euler-x", lambda model_fn, x, schedule, **kw: x)
'''


def _lowres_run(tmp_path, fake_entry_points, dist="piti-task-lowres", version="1.2.0", **record):
    """A run of the plugin task 'lowres' (sampler 'euler-x' of the same plugin) saved while the plugin is
    installed; the plugin is gone again on return."""
    from piti_core.plugins import get_plugin_manager, reset_plugin_manager
    from piti_core.testing import make_plugin_module

    module = make_plugin_module("piti_test_lowres_plugin", LOWRES_PLUGIN)
    fake_entry_points.add("lowres", module, dist=dist, version=version)
    host = get_plugin_manager()
    cfg = resolve_config(preset="tiny", overrides=["task=lowres", "lowres.factor=2", "sample.sampler=euler-x"],
                         extra_sections=host.task_sections())
    run = save_run(tmp_path / "run", cfg, {}, task="lowres", cond_channels=3, source="test")
    fake_entry_points.added.clear()
    reset_plugin_manager()
    return run


def test_run_json_records_the_plugins_of_its_task_and_samplers(tmp_path, fake_entry_points):
    run = _lowres_run(tmp_path, fake_entry_points)
    plugins = read_run_meta(run)["plugins"]
    entry = {"plugin": "lowres", "distribution": "piti-task-lowres", "version": "1.2.0",
             "module": "piti_test_lowres_plugin"}
    assert plugins["task"] == {"name": "lowres", **entry}
    assert plugins["sampler"] == {"name": "euler-x", **entry}
    assert "upsampler_sampler" not in plugins  # dpmpp-sde: the built-in samplers plugin was not loaded


def test_built_in_tasks_and_samplers_record_distribution_piti(tmp_path, clean_plugin_env):
    from tests.helpers import random_run

    from piti_core import __version__

    run, _, _ = random_run(tmp_path / "run", "sketch", upsampler=False)
    plugins = read_run_meta(run)["plugins"]
    assert plugins["task"] == {"name": "sketch", "plugin": "sketch", "distribution": "piti", "version": __version__,
                               "module": "piti_plugins.sketch"}
    assert plugins["sampler"]["plugin"] == "samplers" and plugins["sampler"]["distribution"] == "piti"


def test_a_run_whose_task_is_not_installed_names_what_to_install(tmp_path, fake_entry_points):
    run = _lowres_run(tmp_path, fake_entry_points)
    expected = (f"task 'lowres' of {run} comes from piti-task-lowres 1.2.0, which is not installed: "
                "pip install piti-task-lowres==1.2.0")
    with pytest.raises(CheckpointError) as info:
        load_run(run)
    assert str(info.value) == expected and info.value.exit_code == 1


def test_sample_eval_and_demo_of_a_run_whose_task_is_not_installed(tmp_path, fake_entry_points):
    from tests.hostile.harness import assert_clean_failure, invoke, snapshot

    run = _lowres_run(tmp_path, fake_entry_points)
    cond = tmp_path / "cond.png"
    cond.write_bytes(b"")
    before = snapshot(run, cond)
    for args in (["sample", "--run", run, "--input", cond, "--out", tmp_path / "out"],
                 ["eval", "--run", run, "--out", tmp_path / "eval", "--no-fid", "--n", "2"],
                 ["demo", "--run", run, "--port", "0"]):
        assert_clean_failure(invoke(*args), 1, mentions=["task 'lowres'", "pip install piti-task-lowres==1.2.0"],
                             watched=before, watched_paths=[run, cond])


def test_a_run_written_before_plugins_were_recorded_still_names_its_task(tmp_path, fake_entry_points):
    run = _lowres_run(tmp_path, fake_entry_points)
    meta = json.loads((run / "run.json").read_text())
    del meta["plugins"]
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"task 'lowres' of {run} is not installed and the run does not "
                                              "record which plugin provides it"):
        load_run(run)


def test_a_blocked_or_changed_plugin_is_named(tmp_path, fake_entry_points, monkeypatch):
    from piti_core.plugins import reset_plugin_manager
    from piti_core.testing import make_plugin_module

    run = _lowres_run(tmp_path, fake_entry_points)
    fake_entry_points.add("lowres", make_plugin_module("piti_test_lowres_again", LOWRES_PLUGIN),
                          dist="piti-task-lowres", version="1.2.0")
    monkeypatch.setenv("PITI_DISABLE_PLUGINS", "lowres")
    reset_plugin_manager()
    with pytest.raises(CheckpointError, match="whose plugin 'lowres' did not load here .blocked by PITI_DISABLE"):
        load_run(run)
    monkeypatch.delenv("PITI_DISABLE_PLUGINS")
    fake_entry_points.added.clear()
    fake_entry_points.add("lowres", make_plugin_module("piti_test_lowres_v2", "x = 1"), dist="piti-task-lowres",
                          version="2.0.0")
    reset_plugin_manager()
    with pytest.raises(CheckpointError, match="the installed piti-task-lowres 2.0.0 does not provide it: "
                                              "pip install piti-task-lowres==1.2.0"):
        load_run(run)


def test_a_run_of_a_dash_p_module_says_to_load_it(tmp_path, fake_entry_points):
    run = _lowres_run(tmp_path, fake_entry_points, dist=None)
    with pytest.raises(CheckpointError, match="comes from the plugin module 'piti_test_lowres_plugin', which is not "
                                              "loaded: add `-p piti_test_lowres_plugin`"):
        load_run(run)


def test_a_missing_plugin_sampler_names_what_to_install(tmp_path, fake_entry_points):
    from piti_core.runs import run_sampler

    run = _lowres_run(tmp_path, fake_entry_points)
    cfg = resolve_config(preset="tiny", overrides=["sample.sampler=euler-x"])
    with pytest.raises(CheckpointError, match="sampler 'euler-x' .sample.sampler. of .* pip install "
                                              "piti-task-lowres==1.2.0; or choose another with --sampler"):
        run_sampler(run, cfg.sample, "sampler")
