"""Hostile inputs to weights, plugins and data checks: each fails in one line and leaves the inputs alone.

Weights: ``piti convert`` of foreign ``.pt`` files (text, empty, pickled code, integers, non-tensors,
NaN) and ``piti sample`` on a run whose ``base.safetensors`` was replaced (integers, NaN, truncated,
garbage header, wrong shape, missing key). Plugins: ``piti -p MODULE tasks`` with a module that is
missing, raises, has a syntax error or no hooks (a warning line and exit 0; with
``PITI_STRICT_PLUGINS=1`` an error line and exit 1). Data: ``piti data check`` on captions.jsonl with
duplicate stems, invalid UTF-8 or a non-object line. And an unusable ``PITI_HOME``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.convert.conftest import BASE, ENC, random_official_sd
from tests.data.conftest import write_folder
from tests.helpers import random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot

MARKER_NAME = "PWNED"


class _Payload:
    """Pickles as a call that creates ``marker``: loading it must never run that call."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------ convert


def _text(p: Path, marker: Path) -> None:
    p.write_text("these are not weights\n")


def _empty(p: Path, marker: Path) -> None:
    p.write_bytes(b"")


def _pickled_code(p: Path, marker: Path) -> None:
    torch.save({"decoder.x": _Payload(marker)}, p)


def _raw_pickle(p: Path, marker: Path) -> None:
    with open(p, "wb") as f:
        pickle.dump({"decoder.x": _Payload(marker)}, f)


def _int_tensors(p: Path, marker: Path) -> None:
    torch.save({"decoder.time_embed.0.weight": torch.zeros(4, 4, dtype=torch.int64)}, p)


def _not_tensors(p: Path, marker: Path) -> None:
    torch.save({"decoder.time_embed.0.weight": [1.0, 2.0]}, p)


def _nan(p: Path, marker: Path) -> None:
    sd = random_official_sd(BASE, ENC, 3)
    sd["decoder.out.2.weight"][0, 0] = float("nan")
    torch.save(sd, p)


def _truncated_zip(p: Path, marker: Path) -> None:
    torch.save({"a": torch.zeros(64)}, p)
    p.write_bytes(p.read_bytes()[:100])


CONVERT_CASES = {
    "text-file": (_text, ["not a PyTorch checkpoint"]),
    "zero-bytes": (_empty, ["empty file"]),
    "pickled-code": (_pickled_code, ["other than tensors", "never runs pickled code"]),
    "raw-pickle": (_raw_pickle, ["other than tensors", "never runs pickled code"]),
    "int-tensors": (_int_tensors, ["decoder.time_embed.0.weight", "int64"]),
    "not-tensors": (_not_tensors, ["decoder.time_embed.0.weight", "not a tensor"]),
    "nan-weights": (_nan, ["decoder.out.2.weight", "nan"]),
    "truncated-zip": (_truncated_zip, ["damaged"]),
}


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_refuses_bad_checkpoint(case, tmp_path, recwarn):
    make, mentions = CONVERT_CASES[case]
    src = tmp_path / "in"
    src.mkdir()
    marker = tmp_path / MARKER_NAME
    pt = src / "base_edge.pt"
    make(pt, marker)
    before = snapshot(src)
    res = invoke("convert", "--base", pt, "--task", "sketch", "--out", tmp_path / "out")
    line = assert_clean_failure(res, 1, mentions=["base_edge.pt", *mentions], watched=before, watched_paths=[src])
    assert "weights_only" not in line  # never advise a user holding a hostile file to unpickle it
    assert not marker.exists(), "pickled code ran"
    assert not (tmp_path / "out").exists()
    assert not [w for w in recwarn if "torch" in w.filename], "torch warnings reach the user's terminal"


# -------------------------------------------------------------------------------- run weights


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_run")
    run = random_run(root / "run", upsampler=False)[0]
    arr = np.full((32, 32), 255, np.uint8)
    arr[10, 5:25] = 0
    Image.fromarray(arr).save(root / "sketch.png")
    return run, root / "sketch.png"


def _state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _save(path: Path, sd: dict) -> None:
    from safetensors.torch import save_file

    save_file(sd, str(path))


def _w_int(p: Path) -> None:
    _save(p, {k: (v * 100).to(torch.int32) for k, v in _state(p).items()})


def _w_nan(p: Path) -> None:
    sd = _state(p)
    key = sorted(sd)[-1]
    sd[key].view(-1)[0] = float("inf")
    _save(p, sd)


def _w_truncated(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _w_garbage(p: Path) -> None:
    p.write_bytes(b"\xff" * 8 + b"{not a header}" * 4)


def _w_shape(p: Path) -> None:
    sd = _state(p)
    sd["decoder.out.2.bias"] = torch.zeros(7)
    _save(p, sd)


def _w_missing(p: Path) -> None:
    sd = _state(p)
    del sd["decoder.out.2.bias"]
    _save(p, sd)


RUN_CASES = {
    "int-dtypes": (_w_int, ["int32"]),
    "inf-value": (_w_nan, ["nan or infinite"]),
    "truncated": (_w_truncated, ["safetensors"]),
    "garbage-header": (_w_garbage, ["safetensors"]),
    "wrong-shape": (_w_shape, ["decoder.out.2.bias", "[7]"]),
    "missing-key": (_w_missing, ["decoder.out.2.bias", "missing"]),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_sample_refuses_bad_run_weights(case, sample_run, tmp_path):
    run, sketch = sample_run
    make, mentions = RUN_CASES[case]
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    make(bad / "base.safetensors")
    before = snapshot(bad, sketch)
    res = invoke("sample", "--run", bad, "--input", sketch, "--out", tmp_path / "out", "--steps", "2",
                 "--upsampler-steps", "2")
    assert_clean_failure(res, 1, mentions=["base.safetensors", *mentions], watched=before,
                         watched_paths=[bad, sketch])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ plugins

PLUGIN_SOURCES = {
    "missing": None,
    "raises": "raise RuntimeError('plugin exploded\\nwith a second line')\n",
    "syntax": "def register_tasks(register:\n    pass\n",
    "no-hooks": "VALUE = 1\n",
}
PLUGIN_WORDS = {"missing": "ModuleNotFoundError", "raises": "plugin exploded", "syntax": "SyntaxError",
                "no-hooks": "no piti hooks"}


@pytest.fixture
def plugin_module(tmp_path, clean_plugin_env):
    """plugin_module(kind) -> the import name of a broken module on sys.path (a fresh name per test)."""

    def make(kind: str) -> str:
        name = f"piti_hostile_{kind.replace('-', '_')}_{abs(hash(str(tmp_path))) % 10**8}"
        if PLUGIN_SOURCES[kind] is not None:
            (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCES[kind])
            clean_plugin_env.syspath_prepend(str(tmp_path))
        return name

    return make


@pytest.mark.parametrize("kind", list(PLUGIN_SOURCES))
def test_broken_dash_p_module_warns_in_one_line(kind, plugin_module, tmp_path):
    name = plugin_module(kind)
    before = snapshot(tmp_path)
    res = invoke("-p", name, "tasks", "--json")
    assert res.exit_code == 0, res.stderr  # not fatal: the warning is the one line
    line = assert_clean_failure(res, 0, mentions=[name, "warning", PLUGIN_WORDS[kind]], watched=before,
                                watched_paths=[tmp_path])
    assert "sketch" in {row["task"] for row in json.loads(res.stdout)}, line  # the other plugins still work


@pytest.mark.parametrize("kind", ["missing", "raises", "syntax"])
def test_broken_dash_p_module_is_fatal_when_strict(kind, plugin_module, tmp_path):
    name = plugin_module(kind)
    before = snapshot(tmp_path)
    res = invoke("-p", name, "tasks", env={"PITI_STRICT_PLUGINS": "1"})
    assert_clean_failure(res, 1, mentions=[name, PLUGIN_WORDS[kind]], watched=before, watched_paths=[tmp_path])
    assert res.stdout == ""


def test_piti_plugins_shows_broken_dash_p_module(plugin_module):
    name = plugin_module("raises")
    res = invoke("-p", name, "plugins", "--json", "--check")
    assert_clean_failure(res, 1, mentions=[name, "warning"])
    row = next(r for r in json.loads(res.stdout) if r["name"] == name)
    assert row["status"] == "error" and row["source"] == "option" and "plugin exploded" in row["message"]


# ------------------------------------------------------------------------------- data check


def _dup_stems(root: Path) -> None:
    with open(root / "captions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"stem": "s001", "caption": "another caption"}) + "\n")


def _bad_utf8(root: Path) -> None:
    with open(root / "captions.jsonl", "ab") as f:
        f.write(b'{"stem": "s002", "caption": "caf\xe9 latin-1"}\n')


def _non_object(root: Path) -> None:
    with open(root / "captions.jsonl", "a", encoding="utf-8") as f:
        f.write('["s001", "a list, not an object"]\n')


DATA_CASES = {
    "duplicate-caption-stem": (_dup_stems, ["s001", "line 2"]),
    "invalid-utf8": (_bad_utf8, ["utf-8"]),
    "non-object-line": (_non_object, ['{"stem"']),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_check_reports_bad_captions(case, tmp_path):
    make, words = DATA_CASES[case]
    root = write_folder(tmp_path / "ds", n=3, kinds=("labels",))
    make(root)
    before = snapshot(root)
    res = invoke("data", "check", root)
    assert_clean_failure(res, 1, mentions=["problem"], watched=before, watched_paths=[root])
    found = [line for line in res.stdout.splitlines() if "captions.jsonl:4" in line]
    assert len(found) == 1, res.stdout
    for word in words:
        assert word.lower() in found[0].lower(), found[0]


# -------------------------------------------------------------------------------- PITI_HOME


def _home_file(tmp_path: Path) -> Path:
    (tmp_path / "home").write_text("a file, not a folder\n")
    return tmp_path / "home"


def _home_under_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("a file\n")
    return tmp_path / "afile" / "home"


def _home_read_only(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "home").mkdir(mode=0o555)
    return tmp_path / "home"


@pytest.mark.parametrize("make_home", [_home_file, _home_under_file, _home_read_only],
                         ids=["file", "under-a-file", "read-only"])
def test_unusable_piti_home_is_a_data_error(make_home, sample_run, tmp_path):
    run, _ = sample_run
    home = make_home(tmp_path)
    before = snapshot(tmp_path, run)
    res = invoke("eval", "--run", run, "--n", "2", env={"PITI_HOME": str(home)})
    assert_clean_failure(res, 1, mentions=["PITI_HOME", str(home)], watched=before, watched_paths=[tmp_path, run])
