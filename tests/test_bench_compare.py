"""``piti bench --compare``: the variants side by side on a very small model."""

import json

import torch

from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.bench_compare import OFFICIAL_RECIPE, preset_recipe, recipe_steps
from piti_core.config import resolve_config
from tests.test_bench_cli import SMALL


def test_compare_json_has_every_variant_with_ratios():
    result = CliRunner().invoke(cli, ["bench", "--compare", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup",
                                      "0", "--batch-size", "2", "--variants", "stage1,stage2,checkpointing", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    train = data["train"]
    assert set(train) == {"stage1", "stage2", "checkpointing"}
    assert train["stage2"]["time_vs_stage2"] == 1.0
    # stage 1 trains the encoder only, and its backward skips the decoder's weight gradients
    assert train["stage1"]["trained_params"] < train["stage2"]["trained_params"] == train["stage2"]["params"]
    assert train["stage1"]["flops_per_step"] < train["stage2"]["flops_per_step"]
    assert train["checkpointing"]["checkpointing"] and train["checkpointing"]["flops_per_step"] == \
        train["stage2"]["flops_per_step"]  # model FLOPs: recomputation is not counted
    for t in train.values():
        assert t["step_s"] > 0 and 0 < t["fraction_of_matmul"] < 5 and t["peak_memory_bytes"] > 0
        # on the CPU every timed step follows its own matmul probe
        (pair,) = t["paired"]
        assert pair["step_s"] == t["step_s"] and pair["probe_flops_per_s"] > 0
        assert t["paired_fraction_of_matmul"] == t["flops_per_step"] / pair["step_s"] / pair["probe_flops_per_s"]
    assert set(data["sample"]) == {"base-eager", "upsampler-eager"}
    rec = data["recipes"]
    assert rec["official"]["base_evals"] == 250 and rec["official"]["upsampler_evals"] == 27
    assert abs(rec["default_vs_official"] - rec["default"]["seconds"] / rec["official"]["seconds"]) < 1e-12
    assert {c["name"] for c in data["checks"]} >= {"stage 1 step time vs stage 2", "stage 1 peak memory vs stage 2"}


def test_compare_text_and_bad_variant():
    runner = CliRunner()
    ok = runner.invoke(cli, ["bench", "--compare", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup", "0",
                             "--variants", "stage2", "--no-sample"])
    assert ok.exit_code == 0, ok.output
    assert "stage2" in ok.stdout and "of matmul" in ok.stdout and "one image" not in ok.stdout
    bad = runner.invoke(cli, ["bench", "--compare", "--preset", "tiny", "--variants", "stage3"])
    assert bad.exit_code == 2 and "unknown variant 'stage3'" in bad.output and "Traceback" not in bad.output
    alone = runner.invoke(cli, ["bench", "--preset", "tiny", "--variants", "stage1"])
    assert alone.exit_code == 2 and "--compare" in alone.output


def test_no_train_times_sampling_only():
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "--compare", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup", "0",
                                 "--variants", "stage2", "--no-train", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["train"] == {} and set(data["sample"]) == {"base-eager", "upsampler-eager"}
    from piti_core.host_memory import keep_freed_memory

    assert data["keep_freed_memory"] is keep_freed_memory()  # the bench runs as piti train does on the CPU
    assert data["cpu_conv_paths"] == {"unfold_max_pixels": 64, "nine_matmul_weight_grad": True}
    assert data["recipes"]["default_vs_official"] > 0
    neither = runner.invoke(cli, ["bench", "--compare", "--preset", "tiny", "--no-train", "--no-sample"])
    assert neither.exit_code == 2 and "nothing to time" in neither.output and "Traceback" not in neither.output


def test_recipe_steps_follow_the_sampling_settings():
    cfg = resolve_config(preset="tiny", overrides=["sample.steps=20", "sample.upsampler_start=0.4"])
    steps = recipe_steps(cfg, preset_recipe(cfg))
    assert steps["base_evals"] == 20 and 0 < steps["upsampler_evals"] < 27
    assert recipe_steps(cfg, OFFICIAL_RECIPE)["upsampler_evals"] == 27
    unguided = resolve_config(preset="tiny", overrides=["sample.guidance_scale=1"])
    assert preset_recipe(unguided)["guided"] is False


def test_json_file_is_written_after_every_variant_and_not_overwritten(tmp_path, monkeypatch):
    import piti_core.bench_compare as bc

    out = tmp_path / "compare.json"
    seen = []
    real = bc.bench_train_variant

    def spy(cfg, variant, **kw):  # what the file holds when the next variant starts
        seen.append(json.loads(out.read_text())["train"].keys() if out.exists() else None)
        return real(cfg, variant, **kw)

    monkeypatch.setattr(bc, "bench_train_variant", spy)
    args = ["bench", "--compare", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup", "0", "--variants",
            "stage1,stage2", "--no-sample", "--json-file", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen[0] is None and set(seen[1]) == {"stage1"}  # stage 1 was on disk before stage 2 ran
    assert set(json.loads(out.read_text())["train"]) == {"stage1", "stage2"}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_compiled_bf16_variant_dtype_and_defaults():
    import torch

    from piti_core.bench_compare import _dtype, default_variants

    assert [_dtype(v) for v in ("stage2", "bf16", "compiled", "compiled-bf16")] == ["fp32", "bf16", "fp32", "bf16"]
    chosen, skipped = default_variants(torch.device("cpu"))
    # compiled-bf16 runs only where both bf16 and compile do
    assert ("compiled-bf16" in chosen) == ("bf16" in chosen and "compiled" in chosen)


def test_checks_compare_bf16_and_compiled_bf16_with_fp32():
    from piti_core.bench_compare import checks

    train = {"stage2": {"step_s": 0.34, "fraction_of_matmul": 1.38}, "bf16": {"step_s": 0.226},
             "compiled-bf16": {"step_s": 0.182}}
    found = {c["name"]: c for c in checks({"train": train})}
    assert not found["bf16 throughput vs fp32"]["ok"] and abs(found["bf16 throughput vs fp32"]["value"] - 1.504) < 1e-3
    compiled = found["compiled bf16 throughput vs eager fp32"]
    assert compiled["ok"] and abs(compiled["value"] - 0.34 / 0.182) < 1e-12
    assert "compiled bf16 throughput vs eager fp32" not in {c["name"] for c in checks({"train": {"stage2": train[
        "stage2"], "bf16": train["bf16"]}})}


def test_recipe_cost_counts_guided_steps_inside_the_interval_only():
    from piti_core.bench_compare import recipe_cost
    from piti_core.diffusion import build_schedule
    from piti_core.diffusion.guidance import guided_steps

    cfg = resolve_config(preset="tiny", overrides=["sample.steps=40", "sample.guidance_interval=0.3,0.7"])
    steps = recipe_steps(cfg, preset_recipe(cfg))
    schedule = build_schedule(cfg.diffusion.schedule, cfg.diffusion.steps, "40")
    inside = [t for t in schedule.model_timesteps(torch.arange(40)).tolist() if 300 <= t <= 700]
    assert steps["guided_evals"] == guided_steps(schedule, (0.3, 0.7)) == len(inside) and 0 < len(inside) < 40
    cost = recipe_cost(cfg, preset_recipe(cfg), base_guided_s=2.0, base_plain_s=1.0, upsampler_s=0.0)
    assert cost["base_s"] == 2.0 * len(inside) + 1.0 * (40 - len(inside))
    assert recipe_steps(cfg, OFFICIAL_RECIPE)["guided_evals"] == 250  # the official recipe guides every step


def test_stage2_check_uses_the_per_step_fraction_where_the_bench_paired_probes():
    from piti_core.bench_compare import checks

    paired = {"stage2": {"step_s": 6.0, "fraction_of_matmul": 0.85, "paired_fraction_of_matmul": 0.7}}
    (check,) = [c for c in checks({"train": paired}) if c["name"].startswith("stage 2 fraction")]
    assert check["value"] == 0.7 and not check["ok"] and "probe before it" in check["name"]
    (check,) = [c for c in checks({"train": {"stage2": {"step_s": 6.0, "fraction_of_matmul": 0.85}}})
                if c["name"].startswith("stage 2 fraction")]
    assert check["value"] == 0.85 and check["ok"]


def test_measure_pairs_each_step_with_the_probe_before_it():
    from piti_core.bench_compare import _measure

    calls = []
    rates = iter([100.0, 200.0, 300.0])
    out = _measure(lambda: calls.append("step"), steps=3, warmup=1, device=torch.device("cpu"),
                   probe=lambda: calls.append("probe") or next(rates))
    assert calls == ["step", "probe", "step", "probe", "step", "probe", "step"]  # warm-up, then probe + step
    assert [p["probe_flops_per_s"] for p in out["paired"]] == [100.0, 200.0, 300.0]
    assert abs(out["step_s"] - sum(p["step_s"] for p in out["paired"]) / 3) < 1e-12
    assert "paired" not in _measure(lambda: None, steps=2, warmup=0, device=torch.device("cpu"))
