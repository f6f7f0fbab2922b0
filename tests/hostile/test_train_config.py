"""Hostile inputs to `piti train`, `piti pretrain` and `piti config`: each fails with one line, before
any work, and leaves the user's files as they were."""

import json

import pytest

from tests.helpers import random_run
from tests.hostile.harness import assert_clean_failure, invoke, snapshot


# should a case start training after all, it is a tiny one (one step per stage, a small toy world)
FAST = [a for kv in ("train.stage1_steps=1", "train.stage1_cont_steps=1", "train.stage2_steps=1",
                     "train.upsampler_steps=1", "train.pretrain_steps=1", "train.batch_size=2",
                     "train.perceptual=none", "data.toyworld_samples=8", "encoder.layers=1")
        for a in ("--set", kv)]


@pytest.fixture(scope="module", autouse=True)
def _home(piti_home):
    """Caches (the toy world) go to the module's own PITI_HOME."""
    return piti_home


@pytest.fixture(scope="module")
def sketch_run(tmp_path_factory):
    """A run directory of the sketch task (random tiny weights)."""
    path, _, _ = random_run(tmp_path_factory.mktemp("hostile-train") / "sketch-run", "sketch",
                            overrides=[kv for kv in FAST if kv != "--set"])
    return path


def _config_file(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------ values of --set
SET_CASES = [
    # (command, override, exit code, words the line must name)
    ("config", "train.lr=inf", 2, ["train.lr", "finite"]),
    ("config", "train.lr=nan", 2, ["train.lr"]),
    ("config", "train.lr=-1", 2, ["lr"]),
    ("config", "train.grad_clip=1e999", 2, ["train.grad_clip", "finite"]),
    ("config", "train.stage_minutes=inf", 2, ["train.stage_minutes", "finite"]),
    ("config", "train.batch_size=abc", 2, ["train.batch_size"]),
    ("config", "train.batch_size=[inf]", 2, ["train.batch_size"]),
    ("config", "model.channel_mult=[1e999]", 2, ["model.channel_mult"]),
    ("config", "train.no_such_key=1", 2, ["train.no_such_key"]),
    ("config", "sketch.threshold=nan", 2, ["sketch.threshold"]),
    ("train", "train.lr=inf", 2, ["train.lr", "finite"]),
    ("train", "train.decoder_lr=-inf", 2, ["train.decoder_lr", "finite"]),
    ("pretrain", "train.pretrain_lr=inf", 2, ["train.pretrain_lr", "finite"]),
    ("pretrain", "train.ema_rate=nan", 2, ["train.ema_rate"]),
]


@pytest.mark.parametrize("command, override, code, words", SET_CASES, ids=[f"{c}-{o}" for c, o, _, _ in SET_CASES])
def test_bad_set_values(tmp_path, command, override, code, words):
    extra = ["--task", "sketch", "--out", str(tmp_path / "run"), "--no-preview", *FAST] if command == "train" else \
        ["--out", str(tmp_path / "run"), "--no-preview", *FAST] if command == "pretrain" else []
    res = invoke(command, "--set", override, *extra)
    assert_clean_failure(res, code, mentions=words)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# ------------------------------------------------------------------------------------ config files
CONFIG_FILES = [
    ("inf.toml", b"[train]\nlr = inf\n", ["train.lr", "finite", "inf.toml"]),
    ("nan-task.toml", b"[sketch]\nthreshold = nan\n", ["sketch.threshold", "nan-task.toml"]),
    ("syntax.toml", b"[train\nlr = 1\n", ["syntax.toml", "TOML"]),
    ("latin1.toml", "[data]\nroot = \"caf\u00e9\"\n".encode("latin-1"), ["latin1.toml", "UTF-8"]),
    ("string.toml", b"[train]\nlr = \"fast\"\n", ["train.lr", "string.toml"]),
]


@pytest.mark.parametrize("name, data, words", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_files(tmp_path, name, data, words):
    path = _config_file(tmp_path, name, data)
    before = snapshot(tmp_path)
    res = invoke("config", "--config", path)
    assert_clean_failure(res, 2, mentions=words, watched=before, watched_paths=[tmp_path])


def test_config_that_is_a_folder(tmp_path):
    before = snapshot(tmp_path)
    res = invoke("train", "--task", "sketch", "--config", tmp_path, "--out", tmp_path / "run")
    assert_clean_failure(res, 2, mentions=["--config"], watched=before, watched_paths=[tmp_path])


def test_train_config_file_with_inf(tmp_path):
    path = _config_file(tmp_path, "lr.toml", b"[train]\ndecoder_lr = 1e999\n")
    before = snapshot(tmp_path)
    res = invoke("train", "--task", "sketch", "--config", path, "--out", tmp_path / "run", "--no-preview", *FAST)
    assert_clean_failure(res, 2, mentions=["train.decoder_lr", "lr.toml"], watched=before, watched_paths=[tmp_path])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ --resume and --out
def test_resume_without_out(tmp_path):
    assert_clean_failure(invoke("train", "--resume"), 2, mentions=["--out"])


def test_resume_on_a_missing_folder(tmp_path):
    res = invoke("train", "--resume", "--out", tmp_path / "nothing")
    assert_clean_failure(res, 2, mentions=["nothing", "no run"])
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_resume_on_an_empty_folder(tmp_path, command):
    run = tmp_path / "empty"
    run.mkdir()
    res = invoke(command, "--resume", "--out", run)
    assert_clean_failure(res, 2, mentions=["no run"])
    assert list(run.iterdir()) == []


def test_resume_on_a_folder_of_user_files(tmp_path):
    run = tmp_path / "photos"
    run.mkdir()
    (run / "holiday.png").write_bytes(b"not really a png")
    (run / "notes.txt").write_text("keep me")
    before = snapshot(run)
    res = invoke("train", "--task", "sketch", "--resume", "--out", run, "--no-preview")
    assert_clean_failure(res, 2, mentions=["no run"], watched=before, watched_paths=[run])


def test_resume_with_another_task(sketch_run):
    before = snapshot(sketch_run)
    res = invoke("train", "--resume", "--task", "mask", "--out", sketch_run, "--no-preview")
    assert_clean_failure(res, 2, mentions=["sketch", "mask"], watched=before, watched_paths=[sketch_run])


def test_pretrain_resume_on_a_task_run(sketch_run):
    before = snapshot(sketch_run)
    res = invoke("pretrain", "--resume", "--out", sketch_run, "--no-preview")
    assert_clean_failure(res, 2, mentions=["sketch", "piti train"], watched=before, watched_paths=[sketch_run])


@pytest.mark.parametrize("text", ["{not json", '{"train": {"lr": Infinity}}', "\xff\xfe".encode("latin-1")],
                         ids=["invalid-json", "infinite-lr", "not-utf8"])
def test_resume_a_run_with_a_bad_config_json(tmp_path, sketch_run, text):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sketch_run, run)
    path = run / "config.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif "Infinity" in text:
        data = json.loads(path.read_text())
        data["train"]["lr"] = float("inf")
        path.write_text(json.dumps(data))
    else:
        path.write_text(text)
    before = snapshot(run)
    res = invoke("train", "--resume", "--task", "sketch", "--out", run, "--no-preview")
    line = assert_clean_failure(res, 2, mentions=["config.json"], watched=before, watched_paths=[run])
    assert str(path) in line


def test_out_is_a_file(tmp_path):
    target = tmp_path / "run.txt"
    target.write_text("mine")
    before = snapshot(tmp_path)
    res = invoke("train", "--task", "sketch", "--out", target)
    assert_clean_failure(res, 2, mentions=["run.txt"], watched=before, watched_paths=[tmp_path])


def test_data_is_a_missing_folder(tmp_path):
    before = snapshot(tmp_path)
    res = invoke("train", "--task", "sketch", "--data", tmp_path / "no-such-data", "--out", tmp_path / "run",
                 "--no-preview", *FAST)
    assert_clean_failure(res, 1, mentions=["no-such-data"], watched=before, watched_paths=[tmp_path])
    assert not (tmp_path / "run").exists()  # nothing written: a rerun needs no --overwrite


def test_pretrain_data_is_a_missing_folder(tmp_path):
    res = invoke("pretrain", "--data", tmp_path / "gone", "--out", tmp_path / "run", "--no-preview", *FAST)
    assert_clean_failure(res, 1, mentions=["gone"])
    assert not (tmp_path / "run").exists()


def test_device_cuda_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = invoke("train", "--task", "sketch", "--device", "cuda", "--out", tmp_path / "run")
    assert_clean_failure(res, 2, mentions=["--device"])
    assert not (tmp_path / "run").exists()


def test_train_without_task(tmp_path):
    res = invoke("train", "--out", tmp_path / "run")
    assert_clean_failure(res, 2, mentions=["--task"])
    assert not (tmp_path / "run").exists()
