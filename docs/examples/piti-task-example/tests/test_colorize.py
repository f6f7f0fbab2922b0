"""Tests of the colorize plugin, written with piti's pytest plugin (piti_core.testing).

Run after installing the package: ``python -m pytest docs/examples/piti-task-example/tests``.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.config import resolve_config
from piti_core.errors import ConfigError, DataError
from piti_core.testing import assert_task_contract
from piti_task_example import LUMA_WEIGHTS, ColorizeOptions, ColorizeTask, colourfulness, luminance

SECTIONS = {"colorize": ColorizeOptions}


def config(*overrides):
    """The tiny preset with this plugin's config section known, as the CLI resolves it."""
    return resolve_config(preset="tiny", overrides=list(overrides), extra_sections=SECTIONS)


def photos(n=4, size=64, seed=0):
    """Colourful images (n, 3, size, size) in [-1, 1]: a random colour per quadrant, plus noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(n, 3, 2, 2, generator=g) * 2 - 1
    x = colours.repeat_interleave(size // 2, 2).repeat_interleave(size // 2, 3)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# ------------------------------------------------------------------------------ the shared contract
def test_contract(piti_config):
    assert_task_contract(ColorizeTask(), piti_config)


@pytest.mark.parametrize("luma", sorted(LUMA_WEIGHTS))
def test_contract_with_each_option(luma):
    cfg = config(f"colorize.luma={luma}")
    assert ColorizeTask().options(cfg).luma == luma
    assert_task_contract(ColorizeTask(), cfg)


def test_bad_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        config("colorize.luma=rec2020")
    message = str(info.value)
    assert "colorize.luma" in message and "must be one of bt601, bt709, mean" in message and "\n" not in message


# ------------------------------------------------------------------------------ encode
def test_grey_photo_keeps_its_values_for_every_luma():
    grey = torch.rand(1, 64, 64) * 2 - 1
    for luma in LUMA_WEIGHTS:
        cond = ColorizeTask().encode({"image": grey.expand(3, -1, -1)}, config(f"colorize.luma={luma}"))
        assert cond.shape == (1, 64, 64)
        torch.testing.assert_close(cond, grey, atol=1e-5, rtol=0)


def test_luma_option_changes_the_weights():
    task = ColorizeTask()
    primaries = -torch.ones(3, 3, 64, 64)
    for c in range(3):
        primaries[c, c] = 1.0  # pure red, green, blue
    for luma, weights in LUMA_WEIGHTS.items():
        cfg = config(f"colorize.luma={luma}")
        got = [float(task.encode({"image": p}, cfg).mean()) for p in primaries]
        # a pure primary maps to 2 * weight - 1 on the [-1, 1] scale
        assert got == pytest.approx([2 * w - 1 for w in weights], abs=1e-5)
    assert float(task.encode({"image": primaries[1]}, config("colorize.luma=bt709")).mean()) > \
        float(task.encode({"image": primaries[1]}, config("colorize.luma=bt601")).mean())


def test_encode_resizes_the_model_size_image_to_cond_size():
    cfg = config()
    small = photos(1, size=32)[0]  # the base model's image size in the tiny preset
    cond = ColorizeTask().encode({"image": small}, cfg)
    assert cond.shape == (1, cfg.encoder.cond_size, cfg.encoder.cond_size)
    assert cond.min() >= -1 and cond.max() <= 1
    torch.testing.assert_close(cond[:, ::2, ::2].mean(), luminance(small[None])[0].mean(), atol=0.02, rtol=0)


# ------------------------------------------------------------------------------ preprocess
def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def test_preprocess_colour_and_grey_photos_agree(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)  # 80x100 colour blocks
    colour = _png(tmp_path / "colour.png", rgb)
    grey = tmp_path / "grey.png"
    Image.open(colour).convert("L").save(grey)  # PIL's "L" is the bt601 luminance
    task, cfg = ColorizeTask(), config()
    a, b = task.preprocess(colour, cfg), task.preprocess(grey, cfg)
    assert a.shape == b.shape == (1, 1, 64, 64)
    other = task.preprocess(_png(tmp_path / "other.png", rgb[::-1].copy()), cfg)
    assert (a - b).abs().max() < 0.01 < (a - other).abs().mean()
    torch.testing.assert_close(task.preprocess(Image.open(colour), cfg), a)  # a PIL image works too


def test_preprocess_bad_file_is_a_data_error_naming_it(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="photo.png"):
        ColorizeTask().preprocess(bad, config())


# ------------------------------------------------------------------------------ alignment
def test_alignment_rewards_the_right_luminance_and_colour():
    task, cfg = ColorizeTask(), config()
    images = photos(4)
    batch = {"cond": torch.stack([task.encode({"image": x}, cfg) for x in images])}
    itself = task.alignment(images, batch, cfg)
    shuffled = task.alignment(images.roll(1, 0), batch, cfg)
    grey = task.alignment(luminance(images).expand(-1, 3, -1, -1), batch, cfg)
    assert itself["luma_psnr"] > shuffled["luma_psnr"] + 10
    assert grey["luma_psnr"] >= itself["luma_psnr"] - 1e-3  # a grey copy keeps the luminance ...
    assert grey["colourfulness"] < 1e-6 < itself["colourfulness"]  # ... but has no colour


def test_colourfulness_orders_images():
    grey = torch.zeros(1, 3, 8, 8)
    pale = grey.clone()
    pale[:, 0] = 0.2
    vivid = grey.clone()
    vivid[:, 0], vivid[:, 1] = 1.0, -1.0
    scores = colourfulness(torch.cat([grey, pale, vivid])).tolist()
    assert scores[0] == pytest.approx(0.0, abs=1e-7) and scores[0] < scores[1] < scores[2]


# ------------------------------------------------------------------------------ loading as a plugin
def test_loads_through_its_entry_point(fake_entry_points, plugin_host_factory):
    fake_entry_points.add("example", "piti_task_example", dist="piti-task-example", version="0.1.0")
    host = plugin_host_factory()
    record = host.records["example"]
    assert record.status == "ok", record.message
    assert record.provides == {"tasks": ["colorize"]}
    assert isinstance(host.task("colorize"), ColorizeTask)
    assert host.task_sections()["colorize"] is ColorizeOptions


def test_installed_distribution_declares_the_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="piti") if ep.name == "example"]
    assert len(eps) == 1, "install the package first: pip install ./docs/examples/piti-task-example"
    assert eps[0].value == "piti_task_example" and eps[0].dist.name == "piti-task-example"


def test_cli_lists_the_task(fake_entry_points):
    from click.testing import CliRunner

    from piti_cli.main import cli

    fake_entry_points.add("example", "piti_task_example", dist="piti-task-example")
    res = CliRunner().invoke(cli, ["tasks", "--json", "--preset", "tiny"])
    assert res.exit_code == 0, res.output
    rows = {r["task"]: r for r in json.loads(res.stdout)}
    assert rows["colorize"]["channels"] == 1
