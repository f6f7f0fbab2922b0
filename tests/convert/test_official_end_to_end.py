"""The official checkpoints end to end, through the CLI: the commands of docs/official.md's shell section
run on small official-format files (official key layout, small widths, random weights).

The official recipe (DDPM 250 + fast27 from pure noise) is the converted runs' default; the sample
commands here add ``--steps 3 --upsampler-steps 2`` to stay fast, so the recipe's other values
(samplers, upsampler start, guidance) are checked in settings.json and the step counts in config.json.
"""

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.convert.conftest import ENC, random_official_sd
from tests.hostile.harness import assert_clean_failure, invoke, snapshot

DOC = Path(__file__).resolve().parents[2] / "docs" / "official.md"
QUICK = ["--steps", "3", "--upsampler-steps", "2"]  # appended to every `piti sample` of the doc

# the official layout at 64×64 / 64→256 with 32 base channels (one 64-channel head where there is attention)
BASE = dict(image_size=64, in_channels=3, out_channels=6, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
            attention_resolutions=(32,), num_head_channels=64, dropout=0.0, cond_width=64)
UPS = dict(image_size=256, in_channels=6, out_channels=6, model_channels=32, num_res_blocks=1,
           channel_mult=(1, 1, 1, 2), attention_resolutions=(32,), num_head_channels=64, dropout=0.0, super_res=64,
           cond_width=64)
RELEASED = {"base_mask.pt": (BASE, 3), "upsample_mask.pt": (UPS, 3), "base_edge.pt": (BASE, 1),
            "upsample_edge.pt": (UPS, 1)}
OFFICIAL = {"sampler": "ddpm", "upsampler_sampler": "ddpm", "upsampler_start": 1.0, "guidance": "plain",
            "guidance_scale": 1.3, "upsampler_temperature": 0.997}


def doc_commands() -> list[list[str]]:
    """The ``piti`` commands of the shell blocks of docs/official.md, as argument lists (without 'piti')."""
    text = DOC.read_text(encoding="utf-8")
    commands, block = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            block = [] if block is None and line.strip() in ("```bash", "```sh") else None
            continue
        if block is None:
            continue
        line = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if block and block[-1].endswith("\\"):
            block[-1] = block[-1][:-1] + " " + line.strip()
        elif line.strip():
            block.append(line.strip())
        if block and not block[-1].endswith("\\") and block[-1].startswith("piti "):
            commands.append(shlex.split(block.pop())[1:])
    return commands


def _label_map(path: Path) -> None:
    """A COCO-Stuff label map: class ids as a one-channel PNG (sky, grass, a person)."""
    ids = np.full((256, 256), 156, np.uint8)  # sky-other
    ids[160:] = 123  # grass
    ids[90:200, 100:150] = 0  # person
    Image.fromarray(ids, "L").save(path)


def _sketch(path: Path) -> None:
    """A black-on-white line drawing."""
    pixels = np.full((256, 256), 255, np.uint8)
    pixels[60:64, 40:220] = 0
    pixels[60:200, 40:44] = 0
    pixels[196:200, 40:220] = 0
    Image.fromarray(pixels, "L").save(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding the released file names (small random weights) and the doc's condition files."""
    root = tmp_path_factory.mktemp("official")
    for seed, (name, (unet, cond)) in enumerate(RELEASED.items()):
        torch.save(random_official_sd(unet, ENC, cond, seed), root / name)
    _label_map(root / "labels.png")
    _sketch(root / "sketch.png")
    return root


@pytest.fixture(scope="module")
def ran(workdir):
    """Every command of the doc run in ``workdir`` (`piti sample` with QUICK); {--out: result}."""
    import os

    commands = doc_commands()
    assert [c[0] for c in commands].count("convert") == 2 and [c[0] for c in commands].count("sample") >= 3
    results, cwd = {}, os.getcwd()
    os.chdir(workdir)
    try:
        for args in commands:
            args = args + QUICK if args[0] == "sample" else args
            result = invoke(*args)
            assert result.exit_code == 0, f"piti {shlex.join(args)}: {result.stderr}"
            results[args[args.index("--out") + 1]] = (args, result)
    finally:
        os.chdir(cwd)
    return results


def _settings(workdir: Path, out: str) -> dict:
    return json.loads((workdir / out / "settings.json").read_text())["settings"]


@pytest.mark.parametrize("run", ["runs/piti-mask", "runs/piti-sketch"])
def test_converted_official_runs_store_the_official_recipe(workdir, ran, run):
    sample = json.loads((workdir / run / "config.json").read_text())["sample"]
    assert {k: sample[k] for k in OFFICIAL} == OFFICIAL
    assert (sample["steps"], sample["upsampler_steps"], sample["guidance_interval"]) == ("250", "fast27", [0.0, 1.0])
    assert json.loads((workdir / run / "run.json").read_text())["origin"] == "piti"


def test_samples_from_a_label_map_and_a_sketch_have_the_upsamplers_size(workdir, ran):
    outs = [out for out, (args, _) in ran.items() if args[0] == "sample"]
    assert {"out/mask", "out/sketch"} <= set(outs)
    for out in outs:
        stem = "labels" if "mask" in out else "sketch"
        with Image.open(workdir / out / f"{stem}.png") as image:
            assert image.size == (256, 256)
        with Image.open(workdir / out / f"{stem}_base.png") as image:
            assert image.size == (64, 64)


def test_the_default_records_the_official_recipe_and_fast_piti_s(workdir, ran):
    from piti_core.config import SampleConfig

    official = _settings(workdir, "out/sketch")
    assert {k: official[k] for k in OFFICIAL} == OFFICIAL
    assert (official["steps"], official["upsampler_steps"]) == ("3", "2")  # explicit options beat the recipe
    assert _settings(workdir, "out/mask")["sampler"] == "ddpm"
    fast_args = next(args for args, _ in ran.values() if "--fast" in args)
    fast = _settings(workdir, fast_args[fast_args.index("--out") + 1])
    few = SampleConfig()
    assert (fast["sampler"], fast["upsampler_sampler"], fast["upsampler_start"]) == (
        few.sampler, few.upsampler_sampler, few.upsampler_start) != ("ddpm", "ddpm", 1.0)
    assert (fast["steps"], fast["upsampler_steps"]) == ("3", "2")


def test_recipe_table():
    """The two named recipes: piti's few-step defaults (SampleConfig) and the official one."""
    from piti_core.config import SAMPLE_RECIPES, SampleConfig

    few = SampleConfig()
    assert SAMPLE_RECIPES["fast"] == {k: getattr(few, k) for k in SAMPLE_RECIPES["fast"]}
    assert SAMPLE_RECIPES["official"] == {"sampler": "ddpm", "steps": "250", "upsampler_sampler": "ddpm",
                                          "upsampler_steps": "fast27", "upsampler_start": 1.0}


def test_glide_conversions_keep_piti_s_defaults_and_recipe_fast_is_stored(workdir, tmp_path):
    from piti_core.config import SAMPLE_RECIPES

    glide = {k[len("decoder."):]: v for k, v in torch.load(workdir / "base_edge.pt", weights_only=True).items() if k.startswith("decoder.")}
    torch.save(glide, tmp_path / "base.pt")
    result = invoke("convert", "--glide", "--base", tmp_path / "base.pt", "--task", "sketch", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.stderr
    sample = json.loads((tmp_path / "g" / "config.json").read_text())["sample"]
    assert {k: sample[k] for k in SAMPLE_RECIPES["fast"]} == SAMPLE_RECIPES["fast"]
    result = invoke("convert", "--base", workdir / "base_edge.pt", "--task", "sketch", "--recipe", "fast",
                    "--out", tmp_path / "f")
    assert result.exit_code == 0, result.stderr
    sample = json.loads((tmp_path / "f" / "config.json").read_text())["sample"]
    assert {k: sample[k] for k in SAMPLE_RECIPES["fast"]} == SAMPLE_RECIPES["fast"]
    kept = invoke("convert", "--base", workdir / "base_edge.pt", "--task", "sketch", "--set", "sample.steps=100",
                  "--out", tmp_path / "k")
    assert kept.exit_code == 0, kept.stderr
    sample = json.loads((tmp_path / "k" / "config.json").read_text())["sample"]
    assert (sample["steps"], sample["sampler"]) == ("100", "ddpm")  # what the user set stays


HOSTILE = {  # one hostile input each: the command's arguments after --run RUN, and words its one line names
    "sample --fast --recipe official": (["sample", "--input", "sketch.png", "--out", "out/both", "--fast", "--recipe",
                                         "official"], ["--fast", "--recipe"]),
    "eval --fast --recipe official": (["eval", "--no-fid", "--n", "2", "--out", "out/eval", "--fast", "--recipe",
                                       "official"], ["--fast", "--recipe"]),
    "sample --recipe slow": (["sample", "--input", "sketch.png", "--out", "out/slow", "--recipe", "slow"],
                             ["--recipe", "slow"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_contradictory_or_unknown_recipe_is_one_usage_line(workdir, ran, case):
    args, mentions = HOSTILE[case]
    run = workdir / "runs" / "piti-sketch"
    before = snapshot(run, workdir / "sketch.png")
    out = workdir / args[args.index("--out") + 1]
    args = [workdir / a if a == "sketch.png" else a for a in args]
    args[args.index("--out") + 1] = out
    result = invoke(args[0], "--run", run, *args[1:])
    assert_clean_failure(result, 2, mentions=mentions, watched=before, watched_paths=[run, workdir / "sketch.png"])
    assert not out.exists()


def test_convert_refuses_an_unknown_recipe(workdir, tmp_path):
    before = snapshot(workdir / "base_edge.pt")
    result = invoke("convert", "--base", workdir / "base_edge.pt", "--task", "sketch", "--recipe", "slow",
                    "--out", tmp_path / "r")
    assert_clean_failure(result, 2, mentions=["--recipe", "slow"], watched=before,
                         watched_paths=[workdir / "base_edge.pt"])
    assert not (tmp_path / "r").exists()


def test_convert_checkpoints_names_an_unknown_recipe_before_reading(tmp_path):
    from piti_core.convert import convert_checkpoints
    from piti_core.errors import UsageError

    with pytest.raises(UsageError, match="unknown sampling recipe 'slow'; use one of: fast, official"):
        convert_checkpoints(tmp_path / "r", base=tmp_path / "missing.pt", task="sketch", recipe="slow")
