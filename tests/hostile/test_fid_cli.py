"""Hostile inputs to `piti fid`: empty folders, non-images, stats files with wrong keys or a pickle."""

import pickle

import numpy as np
import pytest
from PIL import Image

from tests.hostile.harness import assert_clean_failure, invoke, snapshot


def _images(folder, n=2, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _empty(tmp):
    (tmp / "a").mkdir()
    return [tmp / "a", _images(tmp / "b")], 1, ["no images"]


def _text_only(tmp):
    (tmp / "a").mkdir()
    (tmp / "a" / "notes.txt").write_text("hello")
    return [tmp / "a", _images(tmp / "b")], 1, ["no images"]


def _junk_png(tmp):
    a = _images(tmp / "a")
    (a / "broken.png").write_bytes(b"not a png at all")
    return [a, _images(tmp / "b")], 1, ["broken.png"]


def _one_image(tmp):
    return [_images(tmp / "a", n=1), _images(tmp / "b")], 1, ["at least 2"]


def _npz_wrong_keys(tmp):
    np.savez(tmp / "s.npz", mean=np.zeros(2048), cov=np.eye(2048))
    return [tmp / "s.npz", _images(tmp / "b")], 1, ["s.npz", "mu"]


def _npz_pickle(tmp):
    np.savez(tmp / "s.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(3))
    return [tmp / "s.npz", _images(tmp / "b")], 1, ["s.npz"]


def _pickle_named_npz(tmp):
    (tmp / "s.npz").write_bytes(pickle.dumps({"mu": [0.0], "sigma": [[1.0]]}))
    return [tmp / "s.npz", _images(tmp / "b")], 1, ["s.npz"]


def _npz_misshapen(tmp):
    np.savez(tmp / "s.npz", mu=np.zeros(2048), sigma=np.eye(16))
    return [tmp / "s.npz", _images(tmp / "b")], 1, ["s.npz", "sigma"]


def _two_stats_one_nan(tmp):
    np.savez(tmp / "s.npz", mu=np.full(2048, np.nan), sigma=np.eye(2048))
    np.savez(tmp / "t.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return [tmp / "s.npz", tmp / "t.npz"], 1, ["s.npz"]


def _other_file(tmp):
    (tmp / "x.json").write_text("{}")
    return [tmp / "x.json", _images(tmp / "b")], 2, ["x.json", ".npz"]


def _missing(tmp):
    return [tmp / "nope", _images(tmp / "b")], 2, ["nope"]


def _save_stats_of_a_stats_file(tmp):
    np.savez(tmp / "t.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    return [tmp / "t.npz", "--save-stats", tmp / "u.npz"], 2, ["--save-stats"]


CASES = [_empty, _text_only, _junk_png, _one_image, _npz_wrong_keys, _npz_pickle, _pickle_named_npz, _npz_misshapen,
         _two_stats_one_nan, _other_file, _missing, _save_stats_of_a_stats_file]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_fid_input_fails_cleanly(case, tmp_path):
    args, code, mentions = case(tmp_path)
    before = snapshot(tmp_path)
    result = invoke("fid", *args, "--device", "cpu")
    assert_clean_failure(result, code, mentions=mentions, watched=before, watched_paths=[tmp_path])
