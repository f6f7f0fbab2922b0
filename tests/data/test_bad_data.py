"""Every kind of bad data: `piti data check` and build_dataset both name the file; nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli
from piti_core.config import DataConfig
from piti_core.data.dataset import build_dataset
from piti_core.errors import DataError

from .conftest import snapshot, write_folder


def _truncated_image(root: Path) -> Path:
    p = root / "images" / "s001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _not_an_image(root: Path) -> Path:
    p = root / "images" / "s001.png"
    p.write_bytes(b"this is not a PNG file\n" * 4)
    return p


def _size_mismatch(root: Path) -> Path:
    p = root / "labels" / "s001.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(p)
    return p


def _missing_partner(root: Path) -> Path:
    p = root / "labels" / "s001.png"
    p.unlink()
    return p


def _label_out_of_range(root: Path) -> Path:
    p = root / "labels" / "s001.png"
    lab = np.array(Image.open(p))
    lab[3, 3] = 9  # 4 classes
    Image.fromarray(lab, "L").save(p)
    return p


def _labels_rgb(root: Path) -> Path:
    p = root / "labels" / "s001.png"
    Image.open(p).convert("RGB").save(p)
    return p


def _edges_rgb(root: Path) -> Path:
    p = root / "edges" / "s001.png"
    Image.open(p).convert("RGB").save(p)
    return p


def _normals_gray(root: Path) -> Path:
    p = root / "normals" / "s001.png"
    Image.open(p).convert("L").save(p)
    return p


def _depth_8bit(root: Path) -> Path:
    p = root / "depth" / "s001.png"
    Image.fromarray(np.full((16, 24), 7, np.uint8), "L").save(p)
    return p


def _depth_nan(root: Path) -> Path:
    (root / "depth" / "s001.png").unlink()
    d = np.full((16, 24), 2.0, np.float32)
    d[5, 5] = np.nan
    d[6, 6] = np.inf
    p = root / "depth" / "s001.npy"
    np.save(p, d)
    return p


CASES = {
    "truncated": (_truncated_image, "labels", "truncated"),
    "not-an-image": (_not_an_image, "labels", "not an image"),
    "size-mismatch": (_size_mismatch, "labels", "10x10"),
    "missing-partner": (_missing_partner, "labels", "missing labels"),
    "label-out-of-range": (_label_out_of_range, "labels", "class id 9"),
    "labels-rgb": (_labels_rgb, "labels", "3 channels"),
    "edges-rgb": (_edges_rgb, "edges", "3 channel"),
    "normals-gray": (_normals_gray, "normals", "1 channel"),
    "depth-8bit": (_depth_8bit, "depth", "8-bit"),
    "depth-nan": (_depth_nan, "depth", "NaN/inf"),
}


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(root=str(root), val_fraction=0.0, **kw)


def _load_all(root: Path, field: str, **kw):
    ds = build_dataset(_cfg(root, **kw), "train", fields=(field,), image_size=8, cond_size=8)
    for i in range(len(ds)):
        ds[i]
    return ds


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_pair_is_named_by_check_and_loader(tmp_path, case):
    corrupt, field, words = CASES[case]
    root = write_folder(tmp_path / "ds")
    bad = corrupt(root)
    before = snapshot(root)

    result = CliRunner().invoke(cli, ["data", "check", str(root)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stdout.splitlines() if str(bad) in line]
    assert lines and words in lines[0], result.stdout
    assert all(line.startswith(str(root)) for line in result.stdout.splitlines())  # one line per problem

    with pytest.raises(DataError) as err:
        _load_all(root, field)
    msg = str(err.value)
    assert str(bad) in msg and words in msg and "\n" not in msg

    # --skip-bad: the loader leaves the one bad pair out and says so
    events = []
    ds = build_dataset(_cfg(root, skip_bad=True), "train", fields=(field,), image_size=8, cond_size=8,
                       callback=events.append)
    for i in range(len(ds)):
        ds[i]
    assert len(ds.skipped) == 1 and ds.skipped[0].stem == "s001", ds.skipped
    assert [e["count"] for e in events if e["event"] == "skip"] == [1]
    result = CliRunner().invoke(cli, ["data", "check", str(root), "--skip-bad"])
    assert result.exit_code == 0 and "1 bad pair(s); 5 usable" in result.stdout, result.output

    assert snapshot(root) == before  # nothing written into the user's folder


def test_truncated_found_up_front_with_full_validation(tmp_path):
    root = write_folder(tmp_path / "ds")
    bad = _truncated_image(root)
    with pytest.raises(DataError, match="s001.png: truncated"):
        build_dataset(_cfg(root), "train", fields=("labels",), image_size=8, validate="full")
    assert str(bad) in CliRunner().invoke(cli, ["data", "check", str(root), "--json"]).stdout


def test_empty_dataset(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    before = snapshot(root)
    result = CliRunner().invoke(cli, ["data", "check", str(root)])
    assert result.exit_code == 1 and f"{root / 'images'}: the data set is empty" in result.stdout
    with pytest.raises(DataError, match="empty"):
        build_dataset(_cfg(root), "train", fields=("labels",), image_size=8)
    assert snapshot(root) == before


def test_unknown_layout_and_bad_dataset_json(tmp_path):
    (tmp_path / "nothing").mkdir()
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "cannot tell the data-set layout" in result.output
    root = write_folder(tmp_path / "ds")
    (root / "dataset.json").write_text('{"classes": "abc"}')
    result = CliRunner().invoke(cli, ["data", "check", str(root)])
    assert result.exit_code == 1 and "dataset.json: key 'classes'" in result.output
    (root / "dataset.json").write_text("{oops")
    with pytest.raises(DataError, match="dataset.json: not valid JSON"):
        build_dataset(_cfg(root), "train", image_size=8)


def test_orphans_duplicates_lossy_labels_and_caption_lines(tmp_path):
    root = write_folder(tmp_path / "ds")
    Image.open(root / "labels" / "s000.png").save(root / "labels" / "zzz.png")  # no image
    Image.open(root / "images" / "s002.png").save(root / "images" / "s002.jpg")  # duplicate stem
    (root / "labels" / "s003.png").rename(root / "labels" / "s003.jpg")  # lossy labels
    with open(root / "captions.jsonl", "a") as f:
        f.write("not json\n")
    result = CliRunner().invoke(cli, ["data", "check", str(root), "--json"])
    assert result.exit_code == 1
    problems = {p["file"]: p["message"] for p in json.loads(result.stdout)["problems"]}
    assert "no image" in problems[str(root / "labels" / "zzz.png")]
    assert "share the stem 's002'" in problems[str(root / "images" / "s002.png")]
    assert "re-save it as PNG" in problems[str(root / "labels" / "s003.jpg")]
    assert any(f.endswith("captions.jsonl:7") for f in problems)
    ds = build_dataset(_cfg(root, skip_bad=True), "train", fields=("labels",), image_size=8)
    assert sorted(p.stem for p in ds.skipped) == ["s002", "s003"]  # orphans do not break a training run


def test_caption_lines_duplicate_or_not_utf8_keep_the_first_good_caption(tmp_path):
    from piti_core.data.index import build_index

    root = write_folder(tmp_path / "ds", n=3, kinds=("labels",))
    with open(root / "captions.jsonl", "ab") as f:
        f.write(b'{"stem": "s000", "caption": "a second caption"}\n')
        f.write(b'{"stem": "s001", "caption": "caf\xe9"}\n')
        f.write('{"stem": "s009", "caption": "line\u2028separator"}\n'.encode())  # one line, not two
    index = build_index(root)
    problems = {str(p.file): p.message for p in index.problems}
    assert set(problems) == {f"{root / 'captions.jsonl'}:4", f"{root / 'captions.jsonl'}:5"}
    assert "already has a caption on line 1" in problems[f"{root / 'captions.jsonl'}:4"]
    assert "not valid UTF-8 (byte 0xe9 at column 33)" in problems[f"{root / 'captions.jsonl'}:5"]
    captions = {s.stem: s.caption for s in index.samples}
    assert captions["s000"] == "picture 0" and captions["s001"] == "picture 1"


def test_colour_labels_with_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    root = write_folder(tmp_path / "ds", meta={"palette": palette, "ignore_color": [255, 255, 255]})
    for p in (root / "labels").iterdir():
        ids = np.array(Image.open(p))
        rgb = np.array(palette, np.uint8)[ids]
        rgb[0, 0] = 255
        Image.fromarray(rgb).save(p)
    ds = build_dataset(_cfg(root, resize="squash"), "train", fields=("labels",), image_size=24, train=False)
    labels = ds[0]["labels"]
    assert labels[0, 0] == 255 and set(labels.unique().tolist()) <= {0, 1, 2, 3, 255}
    img = ds[0]["image"]
    red = torch_round((img[0] + 1) / 2 * 255)
    assert (red[1:] == labels[1:] * 60).all()
    bad = root / "labels" / "s004.png"
    rgb = np.array(Image.open(bad))
    rgb[2, 2] = (1, 2, 3)
    Image.fromarray(rgb).save(bad)
    result = CliRunner().invoke(cli, ["data", "check", str(root)])
    assert result.exit_code == 1 and f"{bad}: colour (1, 2, 3) at 1 pixel(s) is not in the dataset.json palette" \
        in result.stdout


def torch_round(x):
    return x.round().long()
