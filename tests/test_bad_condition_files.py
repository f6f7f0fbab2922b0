"""A condition file that does not fit the task gets one clear line naming the file and the problem,
from the task's preprocess (DataError) and from `piti sample` (exit 1, nothing sampled, no traceback)."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli
from piti_core.errors import DataError
from tests.helpers import random_run


def _wrong_channels(folder):
    path = folder / "rgb_depth.png"  # a colour-mapped depth picture
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(path)
    return "depth", path, "has 3 channels (RGB); depth must be one channel"


def _colour_not_in_palette(folder):
    from piti_core.data.toyworld import PALETTE

    ids = np.zeros((24, 32), np.uint8)
    ids[:, 16:] = 2
    rgb = np.asarray(PALETTE, np.uint8)[ids]
    rgb[3:6, 4:9] = (1, 2, 3)  # 15 pixels in a colour no toy-world class has
    path = folder / "colours.png"
    Image.fromarray(rgb).save(path)
    return "mask", path, "colour (1, 2, 3) at 15 pixel(s) is not in the mask task's palette (12 classes"


def _depth_with_nans(folder):
    depth = np.full((24, 32), 2.5, np.float32)
    depth[5, :7] = np.nan
    path = folder / "nan_depth.tif"
    Image.fromarray(depth, mode="F").save(path)
    return "depth", path, "holds 7 NaN/inf value(s); mark pixels without depth with 0"


CASES = {"wrong channels": _wrong_channels, "colour not in the palette": _colour_not_in_palette,
         "depth with NaNs": _depth_with_nans}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories with random tiny weights for the tasks the cases use (no training needed)."""
    out = {}
    for task in ("mask", "depth"):
        out[task], cfg, host = random_run(tmp_path_factory.mktemp("run") / task, task, upsampler=False)
    return {"cfg": cfg, "host": host, **out}


@pytest.mark.parametrize("case", list(CASES))
def test_preprocess_names_the_file_and_the_problem(case, runs, tmp_path):
    task, path, problem = CASES[case](tmp_path)
    with pytest.raises(DataError) as info:
        runs["host"].task(task).preprocess(path, runs["cfg"])
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


@pytest.mark.parametrize("case", list(CASES))
def test_piti_sample_prints_one_line(case, runs, tmp_path):
    task, path, problem = CASES[case](tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["sample", "--run", str(runs[task]), "--input", str(path), "--out", str(out),
                                   "--steps", "2"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and problem in lines[0]
    assert "Traceback" not in res.output and res.stdout == ""
    assert not out.exists()  # refused before sampling or writing anything
