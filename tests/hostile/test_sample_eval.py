"""Hostile inputs to `piti sample` and `piti eval`: each fails with one line and the right exit code,
and leaves the condition files, the run directory and any user file in --out as they were.

A few cases must succeed instead (a transparent drawing, a 16-bit PNG): real files users have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot

FAST = ("--steps", "2", "--upsampler-steps", "2", "--batch-size", "2")


@pytest.fixture(scope="module")
def sketch_run(tmp_path_factory, piti_home):
    """A random sketch run whose data set is a toy world of 8 images, 4 of them in the val split."""
    overrides = ["data.toyworld_samples=8", "data.val_fraction=0.5"]
    return random_run(tmp_path_factory.mktemp("run") / "sketch", overrides=overrides)[0]


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("run") / "depth", "depth", upsampler=False)[0]


def _sketch(path: Path, rows=(20,)) -> Path:
    arr = np.full((48, 64), 255, np.uint8)
    for r in rows:
        arr[r, 8:56] = 0
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def sketches(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        _sketch(folder / f"s{i}.png", rows=(10 + 8 * i,))
    return folder


def _copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _fails(args, code, mentions, watched_paths):
    before = snapshot(*watched_paths)
    result = invoke(*args)
    return assert_clean_failure(result, code, mentions=mentions, watched=before, watched_paths=watched_paths)


def _sample(run, source, out, *extra):
    return ["sample", "--run", run, "--input", source, "--out", out, *FAST, *extra]


# ------------------------------------------------------------------------------------ --out and --overwrite
@pytest.mark.parametrize("flags", [(), ("--overwrite",)], ids=["plain", "overwrite"])
def test_out_is_the_input_folder(sketch_run, sketches, flags):
    _fails(_sample(sketch_run, sketches, sketches, *flags), 2, ["input"], [sketches, sketch_run])


def test_out_is_the_folder_of_the_input_file(sketch_run, sketches):
    _fails(_sample(sketch_run, sketches / "s0.png", sketches, "--overwrite"), 2, ["input"], [sketches, sketch_run])


def test_out_holds_a_user_file_with_an_output_name(sketch_run, sketches, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "s0.png").write_bytes(b"the user's own picture")
    _fails(_sample(sketch_run, sketches, out, "--overwrite"), 2, ["s0.png", "not written by piti"],
           [sketches, sketch_run, out])


def test_out_holds_a_foreign_settings_json(sketch_run, sketches, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text('{"theme": "dark"}')
    _fails(_sample(sketch_run, sketches, out, "--overwrite"), 2, ["settings.json"], [sketches, sketch_run, out])


def test_earlier_record_cannot_claim_files_outside_out(sketch_run, sketches, tmp_path):
    """A settings.json that lists ../ paths must not make --overwrite delete them."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "precious.png"
    victim.write_bytes(b"keep me")
    record = {"format": "piti-sample/1", "files": ["../precious.png", str(victim)], "outputs": []}
    (out / "settings.json").write_text(json.dumps(record))
    (out / "s0.png").write_bytes(b"user")
    _fails(_sample(sketch_run, sketches, out, "--overwrite"), 2, ["s0.png"], [sketches, sketch_run, tmp_path])


# ------------------------------------------------------------------------------------ condition files
def _empty_folder(folder: Path) -> Path:
    return folder


def _non_images(folder: Path) -> Path:
    (folder / "notes.txt").write_text("hello")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


def _zero_byte(folder: Path) -> Path:
    (folder / "empty.png").write_bytes(b"")
    return folder / "empty.png"


def _truncated(folder: Path) -> Path:
    path = _sketch(folder / "cut.png")
    path.write_bytes(path.read_bytes()[:60])
    return path


def _text_as_png(folder: Path) -> Path:
    (folder / "readme.png").write_text("this is not a picture\n")
    return folder / "readme.png"


def _bomb(size: int):
    def make(folder: Path) -> Path:
        path = folder / f"bomb{size}.png"
        Image.new("1", (size, size)).save(path, optimize=True)
        return path
    return make


def _npy_for_sketch(folder: Path) -> Path:
    np.save(folder / "cond.npy", np.zeros((16, 16, 5), np.float32))
    return folder / "cond.npy"


CONDITION_CASES = {
    "empty folder": (_empty_folder, ["no condition files"]),
    "folder of non-images": (_non_images, ["no condition files"]),
    "zero-byte png": (_zero_byte, ["empty.png"]),
    "truncated png": (_truncated, ["cut.png"]),
    "text file named .png": (_text_as_png, ["readme.png"]),
    "bomb 10000px": (_bomb(10000), ["bomb10000.png", "pixels"]),
    "bomb 20000px": (_bomb(20000), ["bomb20000.png", "pixels"]),
    "npy for a sketch run": (_npy_for_sketch, ["cond.npy"]),
}


@pytest.mark.parametrize("case", list(CONDITION_CASES))
def test_bad_condition_file(sketch_run, tmp_path, case):
    make, mentions = CONDITION_CASES[case]
    folder = tmp_path / "in"
    folder.mkdir()
    source = make(folder)
    out = tmp_path / "out"
    _fails(_sample(sketch_run, source, out), 1, mentions, [folder, sketch_run])
    assert not out.exists()


class _Unpickled:  # loading an object array would call open(marker, "w")
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _npy_wrong_channels(folder):
    np.save(folder / "d.npy", np.ones((16, 16, 5), np.float32))
    return folder / "d.npy", ["d.npy", "shape"]


def _npy_nan(folder):
    depth = np.ones((16, 16), np.float32)
    depth[3, 3] = np.nan
    np.save(folder / "d.npy", depth)
    return folder / "d.npy", ["d.npy", "nan"]


def _npy_object(folder):
    arr = np.empty((4, 4), dtype=object)
    arr[0, 0] = _Unpickled(folder.parent / "pwned")
    np.save(folder / "d.npy", arr, allow_pickle=True)
    return folder / "d.npy", ["d.npy", "object"]


@pytest.mark.parametrize("make", [_npy_wrong_channels, _npy_nan, _npy_object], ids=["channels", "nan", "object"])
def test_bad_depth_npy(depth_run, tmp_path, make):
    folder = tmp_path / "in"
    folder.mkdir()
    source, mentions = make(folder)
    _fails(_sample(depth_run, source, tmp_path / "out"), 1, mentions, [folder, depth_run])
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ files that must work
def test_transparent_drawing_gives_strokes(sketch_run, tmp_path):
    """Black strokes on a transparent canvas (what drawing apps export) are a sketch, not a blank page."""
    rgba = np.zeros((48, 64, 4), np.uint8)  # transparent black everywhere
    rgba[20:22, 8:56, 3] = 255  # opaque black strokes
    rgba[8:40, 30:32, 3] = 255
    path = tmp_path / "drawing.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = tmp_path / "out"
    result = invoke(*_sample(sketch_run, path, out))
    assert result.exit_code == 0, result.stderr
    cond = np.asarray(Image.open(out / "drawing_condition.png").convert("L"))
    assert 0 < (cond < 128).mean() < 0.3  # strokes are there, and the background is not one


def test_sixteen_bit_png_sketch(sketch_run, tmp_path):
    arr = np.full((48, 64), 65535, np.uint16)
    arr[20, 8:56] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = tmp_path / "out"
    result = invoke(*_sample(sketch_run, path, out))
    assert result.exit_code == 0, result.stderr
    assert (np.asarray(Image.open(out / "deep_condition.png").convert("L")) < 128).any()


# ------------------------------------------------------------------------------------ broken run directories
def _no_run_json(run: Path) -> list[str]:
    for p in list(run.iterdir()):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return ["not a piti run directory"]


def _interrupted_train(run: Path) -> list[str]:
    (run / "run.json").unlink()
    (run / "base.safetensors").unlink()
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    (run / "checkpoints" / "latest.json").write_text('{"checkpoint": "step-000010"}')
    return ["--resume", "piti train"]


def _interrupted_pretrain(run: Path) -> list[str]:
    _interrupted_train(run)
    (run / "prior.json").write_text('{"source": "pretrain"}')
    return ["--resume", "piti pretrain"]


def _run_json_invalid(run: Path) -> list[str]:
    (run / "run.json").write_text('{"format": "piti-run", "version": 1,')
    return ["run.json", "JSON"]


def _run_json_path(value: str):
    def make(run: Path) -> list[str]:
        meta = json.loads((run / "run.json").read_text())
        meta["models"]["base"] = value
        (run / "run.json").write_text(json.dumps(meta))
        return ["base", "run directory"]
    return make


def _model_truncated(run: Path) -> list[str]:
    path = run / "base.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    return ["base.safetensors"]


def _no_config(run: Path) -> list[str]:
    (run / "config.json").unlink()
    return ["config.json"]


def _config_invalid(run: Path) -> list[str]:
    (run / "config.json").write_text("{not json")
    return ["config.json"]


def _no_base_model(run: Path) -> list[str]:
    meta = json.loads((run / "run.json").read_text())
    del meta["models"]["base"]
    (run / "run.json").write_text(json.dumps(meta))
    return ["no base model"]


def _run_json_task(value):
    def make(run: Path) -> list[str]:
        meta = json.loads((run / "run.json").read_text())
        meta["task"] = value
        (run / "run.json").write_text(json.dumps(meta))
        return ["task"]
    return make


def _prior_run(run: Path) -> list[str]:
    meta = json.loads((run / "run.json").read_text())
    meta["models"] = {"text_base": "text_base.safetensors"}
    (run / "run.json").write_text(json.dumps(meta))
    return ["no base model", "text_base"]


RUN_CASES = {"no run.json": _no_run_json, "interrupted train": _interrupted_train,
             "interrupted pretrain": _interrupted_pretrain, "run.json invalid": _run_json_invalid,
             "model path ../": _run_json_path("../../base.safetensors"),
             "model path absolute": _run_json_path("/etc/passwd"),
             "model truncated": _model_truncated, "no config.json": _no_config,
             "config.json invalid": _config_invalid, "no base model": _no_base_model,
             "a prior, not a task run": _prior_run, "task not installed": _run_json_task("colorise-xyz"),
             "no task": _run_json_task("")}


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize("case", list(RUN_CASES))
def test_broken_run_dir(sketch_run, sketches, tmp_path, case, command):
    run = _copy_run(sketch_run, tmp_path)
    mentions = RUN_CASES[case](run)
    out = tmp_path / "out"
    args = (_sample(run, sketches, out) if command == "sample"
            else ["eval", "--run", run, "--out", out, "--no-fid", "--n", "2", *FAST])
    _fails(args, 1, mentions, [sketches, run])
    assert not out.exists()


def test_nan_weights_write_nothing(sketch_run, sketches, tmp_path):
    from safetensors.torch import load_file, save_file

    run = _copy_run(sketch_run, tmp_path)
    state = load_file(str(run / "base.safetensors"))
    state = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(run / "base.safetensors"), metadata={"format": "piti-run", "model": "base"})
    out = tmp_path / "out"
    _fails(_sample(run, sketches, out), 1, ["run"], [sketches, run])
    assert not out.exists()


# ------------------------------------------------------------------------------------ piti eval
def _eval(run, out, *extra):
    return ["eval", "--run", run, "--out", out, *FAST, *extra]


@pytest.mark.parametrize("n", ["1", "0", "-3"])
def test_eval_too_few_images(sketch_run, tmp_path, n):
    out = tmp_path / "out"
    _fails(_eval(sketch_run, out, "--n", n), 2, ["--n"], [sketch_run])
    assert not out.exists()


def _no_sampling(monkeypatch):
    from piti_core import generate

    def fail(*args, **kwargs):
        raise AssertionError("sampling started before --fid-weights was checked")

    monkeypatch.setattr(generate, "load_cascade", fail)
    monkeypatch.setattr(generate, "sample_cascade", fail)


def test_eval_missing_fid_weights(sketch_run, tmp_path, monkeypatch):
    _no_sampling(monkeypatch)
    out = tmp_path / "out"
    _fails(_eval(sketch_run, out, "--n", "2", "--fid-weights", tmp_path / "missing.pth"), 1, ["missing.pth"],
           [sketch_run])
    assert not out.exists()


def test_eval_fid_weights_is_a_text_file(sketch_run, tmp_path, monkeypatch):
    _no_sampling(monkeypatch)
    weights = tmp_path / "inception.pth"
    weights.write_text("not weights\n")
    out = tmp_path / "out"
    _fails(_eval(sketch_run, out, "--n", "2", "--fid-weights", weights), 1, ["inception.pth"], [sketch_run, weights])
    assert not out.exists()


@pytest.mark.parametrize("name", ["metrics.json", "report.html", "samples/000000.png"])
def test_eval_out_holds_a_user_file_with_an_output_name(sketch_run, tmp_path, name):
    out = tmp_path / "out"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("the user's own file")
    _fails(_eval(sketch_run, out, "--n", "2", "--no-fid", "--overwrite"), 2, [name.split("/")[-1]],
           [sketch_run, out])
