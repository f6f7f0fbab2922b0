"""`piti sample` on a small random run: files, settings, refusals, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli
from tests.helpers import random_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("run") / "sketch")[0]


@pytest.fixture
def sketches(tmp_path):
    folder = tmp_path / "sketches"
    folder.mkdir()
    for i in range(3):
        arr = np.full((80, 100), 255, np.uint8)
        arr[20 + i * 5, 10:90] = 0  # dark strokes on white: the polarity is detected
        Image.fromarray(arr).save(folder / f"s{i}.png")
    return folder


def _sample(run_dir, source, out, *extra):
    return CliRunner().invoke(cli, ["sample", "--run", str(run_dir), "--input", str(source), "--out", str(out),
                                    "--steps", "4", "--upsampler-steps", "3", "--batch-size", "2", *extra])


def test_sample_writes_images_grid_and_settings(run_dir, sketches, tmp_path):
    out = tmp_path / "out"
    res = _sample(run_dir, sketches, out, "--seed", "3", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["outputs"]) == 3
    img = Image.open(out / "s0.png")
    assert img.size == (64, 64) and Image.open(out / "s0_base.png").size == (32, 32)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["seed"] == 3 and settings["settings"]["steps"] == "4"
    assert settings["steps_run"] == {"base": 4, "upsampler": 1}  # "3" is 0, 500, 999: only 0 lies below 0.4·T
    assert settings["task"] == "sketch" and settings["models"] == ["base", "upsampler"]
    first = np.asarray(Image.open(out / "s1.png"))
    res = _sample(run_dir, sketches, tmp_path / "again", "--seed", "3")
    assert res.exit_code == 0
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "s1.png")))  # same settings, same image


def test_refuses_to_overwrite(run_dir, sketches, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _sample(run_dir, sketches, out)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_input_is_one_line(run_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    res = _sample(run_dir, bad, tmp_path / "out")
    assert res.exit_code == 1
    assert "broken.png" in res.output and "Traceback" not in res.output
    res = _sample(run_dir, tmp_path / "missing", tmp_path / "out")
    assert res.exit_code == 1 and "no such file or folder" in res.output


def test_a_folder_gives_only_the_files_the_task_reads(run_dir, sketches, tmp_path):
    np.save(sketches / "features.npy", np.zeros((8, 8), np.float32))  # no sketch: the task reads images only
    res = _sample(run_dir, sketches, tmp_path / "out", "--json", "--steps", "2")
    assert res.exit_code == 0, res.output
    assert [o["input"].rsplit("/", 1)[-1] for o in json.loads(res.stdout)["outputs"]] == ["s0.png", "s1.png", "s2.png"]


def test_upsampler_sampler_option_reaches_the_upsampler_only(run_dir, sketches, tmp_path, monkeypatch):
    from piti_core.diffusion import samplers

    calls = []

    def spy(name):
        real = samplers.SAMPLERS[name]

        def sampler(model_fn, x, schedule, **kw):
            calls.append((name, x.shape[-1]))
            return real(model_fn, x, schedule, **kw)
        return sampler

    for name in list(samplers.SAMPLERS):
        monkeypatch.setitem(samplers.SAMPLERS, name, spy(name))
    base = json.loads((run_dir / "config.json").read_text())["sample"]["sampler"]
    assert base != "ddim"
    res = _sample(run_dir, sketches, tmp_path / "ddim", "--upsampler-sampler", "ddim")
    assert res.exit_code == 0, res.output
    assert calls == [(base, 32), ("ddim", 64)] * 2  # two batches: the run's base sampler, upsampler with ddim
    settings = json.loads((tmp_path / "ddim" / "settings.json").read_text())["settings"]
    assert settings["upsampler_sampler"] == "ddim" and settings["sampler"] == base
    res = _sample(run_dir, sketches, tmp_path / "bad", "--upsampler-sampler", "euler")
    assert res.exit_code == 2 and "euler" in res.output and "dpmpp-sde" in res.output  # the registry's names


def test_a_run_without_base_model_is_one_line_for_sample_and_eval(tmp_path):
    """load_cascade, shared by sample and eval, names the run and what the caller was doing."""
    from piti_cli.main import cli
    from piti_core.runs import RUN_FORMAT, RUN_JSON, RUN_VERSION

    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_JSON).write_text(json.dumps({"format": RUN_FORMAT, "version": RUN_VERSION, "task": "sketch",
                                            "models": {"upsampler": "upsampler.safetensors"}}))
    from piti_core.config import resolve_config, save_config

    save_config(resolve_config(preset="tiny"), run / "config.json")
    (tmp_path / "s.png").write_bytes(b"")
    for args, verb in ((["sample", "--run", str(run), "--input", str(tmp_path / "s.png")], "sample"),
                       (["eval", "--run", str(run), "--no-fid"], "evaluate")):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and "has no base model" in res.output and f"{verb} a run made" in res.output
        assert "Traceback" not in res.output


def test_overwrite_replaces_only_what_an_earlier_sample_wrote(run_dir, sketches, tmp_path):
    out = tmp_path / "out"
    assert _sample(run_dir, sketches, out).exit_code == 0
    record = json.loads((out / "settings.json").read_text())
    assert record["format"] == "piti-sample/1" and "s2_base.png" in record["files"]
    (out / "notes.txt").write_text("mine")
    (sketches / "s2.png").unlink()  # a smaller second run: s2's outputs are the earlier run's and go
    res = _sample(run_dir, sketches, out, "--overwrite")
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["notes.txt", "grid.png", "settings.json",
                            *(f"s{i}{k}.png" for i in range(2) for k in ("", "_base", "_condition"))])
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_knows_settings_json_without_a_file_list(run_dir, sketches, tmp_path):
    """A settings.json that lists only its outputs' paths still tells which files piti wrote."""
    out = tmp_path / "out"
    assert _sample(run_dir, sketches, out).exit_code == 0
    record = json.loads((out / "settings.json").read_text())
    del record["files"], record["format"]
    (out / "settings.json").write_text(json.dumps(record))
    res = _sample(run_dir, sketches, out, "--overwrite")
    assert res.exit_code == 0, res.output


def test_a_failure_leaves_no_partial_output(run_dir, sketches, tmp_path, monkeypatch):
    from piti_core import generate

    out = tmp_path / "out"
    assert _sample(run_dir, sketches, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = generate.sample_cascade, []

    def second_batch_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise generate.DataError("the second batch failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "sample_cascade", second_batch_fails)
    res = _sample(run_dir, sketches, out, "--overwrite", "--seed", "9")
    assert res.exit_code == 1 and "second batch" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier outputs, untouched
    calls.clear()
    res = _sample(run_dir, sketches, tmp_path / "new" / "out")
    assert res.exit_code == 1 and not (tmp_path / "new").exists()


@pytest.mark.parametrize("stage", ["sample_base", "sample_upsampler"])
def test_non_finite_samples_are_an_error_naming_the_run(run_dir, sketches, tmp_path, monkeypatch, stage):
    """NaN/inf samples (diverged weights, fp16 overflow) are never written as images."""
    import torch

    from piti_core import sampling

    real = getattr(sampling, stage)
    monkeypatch.setattr(sampling, stage, lambda *a, **k: real(*a, **k) * torch.tensor(float("nan")))
    out = tmp_path / "out"
    res = _sample(run_dir, sketches, out)
    assert res.exit_code == 1 and str(run_dir) in res.stderr and "non-finite" in res.stderr
    assert "Traceback" not in res.output and not out.exists()


def test_inputs_whose_outputs_would_share_a_name_get_distinct_stems(run_dir, tmp_path):
    """x.png's base sample is x_base.png, as is the input x_base.png's image; an input grid.png's image
    would be the grid: every output gets its own file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("grid.png", "x.png", "x_base.png"):
        arr = np.full((40, 40), 255, np.uint8)
        arr[10 + len(name), 5:35] = 0
        Image.fromarray(arr).save(folder / name)
    out = tmp_path / "out"
    res = _sample(run_dir, folder, out, "--json")
    assert res.exit_code == 0, res.output
    outputs = json.loads(res.stdout)["outputs"]
    files = [o[k] for o in outputs for k in ("image", "base", "condition")]
    assert len(set(files)) == 9 and len(list(out.iterdir())) == 11  # 9 images, grid.png, settings.json


def _sample_default_out(run_dir, source, *extra):
    return CliRunner().invoke(cli, ["sample", "--run", str(run_dir), "--input", str(source), "--steps", "2",
                                    "--upsampler-steps", "2", *extra])


def test_set_sample_keys_change_this_call_and_flags_win(run_dir, sketches, tmp_path):
    res = _sample(run_dir, sketches, tmp_path / "a", "--set", "sample.steps=3", "--set", "sample.guidance_scale=2.5")
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "a" / "settings.json").read_text())["settings"]
    assert settings["steps"] == "4" and settings["guidance_scale"] == 2.5  # --steps 4 (given by _sample) wins
    res = CliRunner().invoke(cli, ["sample", "--run", str(run_dir), "--input", str(sketches), "--out",
                                   str(tmp_path / "b"), "--upsampler-steps", "2", "--set", "sample.steps=3"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["settings"]["steps"] == "3"


def test_default_out_never_collides(run_dir, sketches):
    first = _sample_default_out(run_dir, sketches)
    second = _sample_default_out(run_dir, sketches)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    folders = [Path(r.stdout.strip()).parent for r in (first, second)]
    assert folders[0] != folders[1] and all((f / "settings.json").is_file() for f in folders)
    assert all(str(f) in r.stderr for f, r in zip(folders, (first, second)))  # each says where it wrote
