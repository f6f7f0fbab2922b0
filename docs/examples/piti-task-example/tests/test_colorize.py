"""Tests of the colorize plugin: the shared contracts (task, field), its encoder, its hints files and its metric.

Run after installing the package: ``python -m pytest docs/examples/piti-task-example/tests``.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from piti_core.contract import (ConfigError, DataError, EvalContext, MetricBatch, assert_field_contract,
                                assert_task_contract, task_config)
from piti_task_example import (HINTS, LUMA_WEIGHTS, ChromaError, ColorizeOptions, ColorizeTask, colourfulness,
                               hints_from_photo, luminance)
from piti_task_example.encoder import ConvTokenEncoder


def config(*overrides):
    """The tiny preset with this plugin's section known (``tasks.colorize.KEY=VALUE``), as the CLI resolves it."""
    return task_config(ColorizeTask(), *overrides)


def photos(n=4, size=64, seed=0):
    """Colourful images (n, 3, size, size) in [-1, 1]: a random colour per quadrant, plus noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(n, 3, 2, 2, generator=g) * 2 - 1
    x = colours.repeat_interleave(size // 2, 2).repeat_interleave(size // 2, 3)
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def no_hints(size=64):
    return torch.zeros(4, size, size)


def write_hints(path, width, height, points):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"width": width, "height": height,
                                "points": [{"x": x, "y": y, "rgb": rgb} for x, y, rgb in points]}))
    return path


# ------------------------------------------------------------------------------ the shared contracts
def test_task_contract(piti_config):
    assert_task_contract(ColorizeTask(), piti_config)


@pytest.mark.parametrize("luma", sorted(LUMA_WEIGHTS))
def test_task_contract_with_each_option(luma):
    cfg = config(f"tasks.colorize.luma={luma}", "tasks.colorize.grid=2")
    assert ColorizeTask().options(cfg).luma == luma
    assert_task_contract(ColorizeTask(), cfg)


def test_bad_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        config("tasks.colorize.luma=rec2020")
    message = str(info.value)
    assert "colorize.luma" in message and "must be one of bt601, bt709, mean" in message and "\n" not in message


def test_field_contract(tmp_path):
    good = write_hints(tmp_path / "good.json", 20, 10, [(3, 4, [255, 0, 0])])
    bad = tmp_path / "bad.json"
    bad.write_text('{"width": 20, "height": 10, "points": [{"x": 30, "y": 4, "rgb": [255, 0, 0]}]}')
    assert_field_contract(HINTS, good_file=good, bad_file=bad)


# ------------------------------------------------------------------------------ its own encoder
def test_encoder_is_its_own_architecture_sized_by_the_options():
    cfg = config("tasks.colorize.grid=3", "tasks.colorize.channels=8")
    encoder = ColorizeTask().build_encoder(cfg)
    assert isinstance(encoder, ConvTokenEncoder) and encoder.pool.output_size == 3
    tokens, pooled = encoder(torch.zeros(2, 5, cfg.encoder.cond_size, cfg.encoder.cond_size))
    assert tokens.shape == (2, 9, cfg.encoder.width) and pooled.shape == (2, cfg.encoder.width)
    assert ColorizeTask().build_encoder(cfg, decoder=cfg.upsampler).pool.output_size == 3  # both decoders


# ------------------------------------------------------------------------------ the hints field
def test_hints_file_is_rendered_into_a_sparse_map(tmp_path):
    path = write_hints(tmp_path / "hints" / "a.json", 20, 10, [(3, 4, [255, 0, 51]), (19, 9, [0, 0, 0])])
    hints = HINTS.load(path)["hints"]
    assert hints.shape == (4, 10, 20) and HINTS.probe_size(path) == (20, 10)
    np.testing.assert_allclose(hints[:, 4, 3], [1.0, 0.0, 0.2, 1.0], atol=1e-6)
    assert hints[3].sum() == 2 and hints[3, 9, 19] == 1  # a black hint is still a hint


@pytest.mark.parametrize("text, words", [
    ("{not json", "Expecting property name"),
    ('{"width": 20, "height": 10}', "points must be a list"),
    ('{"width": 0, "height": 10, "points": []}', "width and height"),
    ('{"width": 20, "height": 10, "points": [{"x": 1, "y": 2, "rgb": [300, 0, 0]}]}', "points[0]"),
])
def test_a_bad_hints_file_is_one_line_naming_it(tmp_path, text, words):
    bad = tmp_path / "hints" / "b.json"
    bad.parent.mkdir()
    bad.write_text(text)
    with pytest.raises(DataError) as info:
        HINTS.load(bad)
    message = str(info.value)
    assert str(bad) in message and words in message and "\n" not in message


def test_hints_derived_from_a_photo_are_its_own_colours_and_repeatable():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    hints = hints_from_photo(photo, max_points=50)
    ys, xs = np.nonzero(hints[3])
    assert 0 < len(ys) <= 50 and hints.shape == (4, 24, 32)
    np.testing.assert_allclose(hints[:3, ys, xs].T * 255, photo[ys, xs], atol=1e-3)
    np.testing.assert_array_equal(hints_from_photo(photo, max_points=50), hints)


def test_encode_keeps_a_shrunk_hint_colour():
    cfg = config()
    s = cfg.encoder.cond_size
    hints = no_hints(s)
    hints[:, 10, 20] = torch.tensor([0.6, 0.2, 0.4, 0.25])  # premultiplied: the colour is (0.6, 0.2, 0.4) / 0.25
    cond = ColorizeTask().encode({"image": photos(1, s)[0], "hints": hints}, cfg)
    assert cond.shape == (5, s, s) and cond[4].sum() == 1 and cond[4, 10, 20] == 1
    torch.testing.assert_close(cond[1:4, 10, 20], torch.tensor([1.0, 0.6, 1.0]))  # (2.4, 0.8, 1.6) clamped, to [-1, 1]
    assert cond[1:4].abs().sum() == cond[1:4, 10, 20].abs().sum()  # no colour where there is no hint


# ------------------------------------------------------------------------------ encode: the luminance
def test_grey_photo_keeps_its_values_for_every_luma():
    grey = torch.rand(1, 64, 64) * 2 - 1
    for luma in LUMA_WEIGHTS:
        cond = ColorizeTask().encode({"image": grey.expand(3, -1, -1), "hints": no_hints()},
                                     config(f"tasks.colorize.luma={luma}"))
        torch.testing.assert_close(cond[:1], grey, atol=1e-5, rtol=0)


def test_luma_option_changes_the_weights():
    task = ColorizeTask()
    primaries = -torch.ones(3, 3, 64, 64)
    for c in range(3):
        primaries[c, c] = 1.0  # pure red, green, blue
    for luma, weights in LUMA_WEIGHTS.items():
        cfg = config(f"tasks.colorize.luma={luma}")
        got = [float(task.encode({"image": p, "hints": no_hints()}, cfg)[0].mean()) for p in primaries]
        assert got == pytest.approx([2 * w - 1 for w in weights], abs=1e-5)  # a primary maps to 2 * weight - 1


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
    assert a.shape == b.shape == (1, 5, 64, 64) and a[:, 1:].abs().sum() == 0  # no hints file: no hints
    other = task.preprocess(_png(tmp_path / "other.png", rgb[::-1].copy()), cfg)
    assert (a - b).abs().max() < 0.01 < (a - other).abs().mean()
    torch.testing.assert_close(task.preprocess(Image.open(colour), cfg), a)  # a PIL image works too


def test_preprocess_reads_the_photo_hints(tmp_path):
    (tmp_path / "images").mkdir()
    photo = _png(tmp_path / "images" / "p.png", np.full((64, 64, 3), 128, np.uint8))
    write_hints(tmp_path / "hints" / "p.json", 64, 64, [(8, 16, [255, 0, 0])])  # the data-set layout
    cond = ColorizeTask().preprocess(photo, config())
    assert cond[0, 4].sum() == 1 and cond[0, 4, 16, 8] == 1
    torch.testing.assert_close(cond[0, 1:4, 16, 8], torch.tensor([1.0, -1.0, -1.0]))


def test_preprocess_hints_of_another_size_is_one_line_naming_them(tmp_path):
    photo = _png(tmp_path / "p.png", np.zeros((64, 64, 3), np.uint8))
    hints = write_hints(tmp_path / "hints" / "p.json", 32, 32, [])
    with pytest.raises(DataError, match="p.json.*32x32.*64x64"):
        ColorizeTask().preprocess(photo, config())
    assert hints.is_file()


def test_inputs_are_photos_uploaded(piti_config):
    task = ColorizeTask()
    assert ".png" in task.input_suffixes(piti_config) and ".json" not in task.input_suffixes(piti_config)
    assert task.input_kind(piti_config) == "upload"


def test_preprocess_bad_file_is_a_data_error_naming_it(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="photo.png"):
        ColorizeTask().preprocess(bad, config())


# ------------------------------------------------------------------------------ alignment and the metric
def _cond(images, cfg):
    task = ColorizeTask()
    return torch.stack([task.encode({"image": x, "hints": no_hints(x.shape[-1])}, cfg) for x in images])


def test_alignment_rewards_the_right_luminance_and_colour():
    task, cfg = ColorizeTask(), config()
    images = photos(4)
    batch = {"cond": _cond(images, cfg)}
    itself = task.alignment(images, batch, cfg)
    shuffled = task.alignment(images.roll(1, 0), batch, cfg)
    grey = task.alignment(luminance(images).expand(-1, 3, -1, -1), batch, cfg)
    assert itself["luma_psnr"] > shuffled["luma_psnr"] + 10
    assert grey["luma_psnr"] >= itself["luma_psnr"] - 1e-3  # a grey copy keeps the luminance ...
    assert grey["colourfulness"] < 1e-6 < itself["colourfulness"]  # ... but has no colour
    assert task.alignment_directions == {"luma_psnr": "higher"}


def test_colourfulness_orders_images():
    grey = torch.zeros(1, 3, 8, 8)
    pale = grey.clone()
    pale[:, 0] = 0.2
    vivid = grey.clone()
    vivid[:, 0], vivid[:, 1] = 1.0, -1.0
    scores = colourfulness(torch.cat([grey, pale, vivid])).tolist()
    assert scores[0] == pytest.approx(0.0, abs=1e-7) and scores[0] < scores[1] < scores[2]


def test_chroma_error_is_zero_for_the_real_photo_and_grows_with_colour_errors(piti_config):
    metric = ChromaError()
    assert (metric.name, metric.direction, metric.tasks) == ("chroma-error", "lower", ("colorize",))
    assert metric.needs == {"samples", "real"}
    real = photos(4)
    ctx = EvalContext(task=ColorizeTask(), cfg=piti_config, n=4, resolution=64, device="cpu", toy_world=False)

    def score(samples):
        state = metric.update(metric.start(ctx), MetricBatch(samples=samples, real=real), ctx)
        return metric.finalize(state, ctx)["chroma-error"]

    grey = luminance(real).expand(-1, 3, -1, -1)
    assert score(real) == pytest.approx(0.0, abs=1e-6)
    assert 0 < score(grey) < score(real.flip(1))  # swapped red and blue is further off than no colour


# ------------------------------------------------------------------------------ loading as a plugin
def test_loads_through_its_entry_point(fake_entry_points, plugin_host_factory):
    fake_entry_points.add("example", "piti_task_example", dist="piti-task-example", version="0.2.0")
    host = plugin_host_factory()
    record = host.records["example"]
    assert record.status == "ok", record.message
    assert record.provides == {"tasks": ["colorize"], "metrics": ["chroma-error"]}
    assert isinstance(host.task("colorize"), ColorizeTask)
    assert host.task_sections()["colorize"] is ColorizeOptions


def test_a_too_old_piti_is_one_clear_line(monkeypatch):
    import functools
    import importlib

    import piti_core.contract as contract
    import piti_task_example
    from piti_core.contract import PluginError

    monkeypatch.setattr(contract, "CONTRACT_VERSION", "1.0")
    monkeypatch.setattr(contract, "contract_satisfies", functools.partial(contract.contract_satisfies, version="1.0"))
    with pytest.raises(PluginError, match=r">=2.0,<3.*provides 1.0"):
        importlib.reload(piti_task_example)
    monkeypatch.undo()
    importlib.reload(piti_task_example)


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
    assert rows["colorize"]["channels"] == 5
