"""``piti bench --compare``: the speed and memory variants of training and sampling, side by side.

One process, one matmul calibration, then for the base model of the preset (random weights):

* **training variants** — full training steps as ``piti train`` runs them (the stage's objective,
  AdamW, EMA; random batches instead of data): ``stage2`` (encoder + decoder, the reference),
  ``stage1`` (frozen decoder: no weight gradients, no optimizer state, eval-mode dropout),
  ``checkpointing`` (stage 2 with ``model.checkpointing``), ``bf16`` (stage 2 under bf16 autocast),
  ``compiled`` (stage 2 with ``torch.compile``), ``compiled-bf16`` (both: the GPU configuration);
* **sampling** — seconds per step for one image: the base model with classifier-free guidance (one
  batched pass over 2 rows) and the upsampler, eager, and compiled / bf16 where asked;
* **recipes** — seconds per 256×256 image as model evaluations × step cost: the official recipe (DDPM
  250 guided base steps + fast27 upsampler steps from pure noise) against the preset's sampling settings.

Each variant is a ratio to its reference (stage 2 eager fp32; eager fp32 sampling) and a fraction of
the matmul rate measured in the same run and dtype: a square matmul is timed before every variant and
at the end, and the median is used, so a shared machine's load swings move both sides alike. Variants
that cannot run here (bf16 on a CPU without AVX512-BF16/AMX, compile without a C++ compiler) are listed
under ``skipped`` with the reason.
Peak memory is the CUDA allocator peak, or on CPU the process's peak RSS during the timed steps.
"""

from __future__ import annotations

import ctypes
import gc
import time
from typing import Any, Callable, Optional

from piti_core.bench import PeakMemory, _sync, matmul_rate
from piti_core.errors import UsageError
from piti_core.host_memory import keep_freed_memory

TRAIN_VARIANTS = ("stage2", "stage1", "checkpointing", "bf16", "compiled", "compiled-bf16")
OFFICIAL_RECIPE = {"sampler": "ddpm", "steps": "250", "upsampler_sampler": "ddpm", "upsampler_steps": "fast27",
                   "upsampler_start": 1.0, "guided": True, "guidance_interval": (0.0, 1.0)}


# ------------------------------------------------------------------------------------------ helpers
def _release_memory() -> None:
    """Free what the last variant left behind, and give it back to the OS (glibc keeps freed chunks)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def default_variants(device) -> tuple[list[str], dict[str, str]]:
    """The variants worth running on ``device`` and the reasons for the ones left out."""
    from piti_core.precision import cpu_has_native_bf16

    skipped = {}
    train = list(TRAIN_VARIANTS)
    if device.type == "cpu" and not cpu_has_native_bf16():
        skipped["bf16"] = ("this CPU has no AVX512-BF16/AMX: bf16 matmuls are emulated, 10-50x slower than "
                           "fp32 (docs/performance.md); name it in --variants to run it anyway")
        train.remove("bf16")
    reason = compile_unavailable(device)
    if reason:
        skipped["compiled"] = reason
        train.remove("compiled")
    if "bf16" not in train or "compiled" not in train:
        train.remove("compiled-bf16")  # its reason is the one given for bf16 or compiled
    return train, skipped


def _dtype(variant: str) -> str:
    """The compute dtype of a variant: bf16 for ``bf16`` and ``compiled-bf16``, fp32 otherwise."""
    return "bf16" if variant.endswith("bf16") else "fp32"


def compile_unavailable(device) -> Optional[str]:
    """Why torch.compile cannot run here, or None."""
    from piti_core.compile import check_available
    from piti_core.errors import CompileError

    try:
        check_available(device)
    except CompileError as exc:
        return str(exc)
    return None


def _compile(model, device, purpose: str):
    from piti_core.compile import compile_model

    return compile_model(model, device=device, purpose=purpose)


class _Batches:
    """Stands in for the data stream: the same random batch at every step."""

    def __init__(self, batch: dict):
        self._batch = batch

    def batch(self, i: int) -> dict:
        return self._batch

    def position(self, i: int) -> dict:
        return {"epoch": 0, "batch_in_epoch": i}


def _stage(cfg, name: str):
    from piti_core.train.recipe import piti_stages

    return next(s for s in piti_stages(cfg.train) if s.name == name)


def _variant_stage(cfg, variant: str):
    """The recipe stage a training variant runs: stage 1 for ``stage1``, stage 2 for every other."""
    return _stage(cfg, "stage1" if variant == "stage1" else "stage2")


def _with_checkpointing(cfg, on: bool):
    import attrs

    return attrs.evolve(cfg, model=attrs.evolve(cfg.model, checkpointing=on))


def meta_flops(cfg, which: str, stage, rows: int, cond_channels: int, seed: int = 0) -> tuple[int, int]:
    """(training step, sampling evaluation) FLOPs of the base model or the upsampler with ``stage``'s
    frozen/trained split, counted by :func:`piti_core.bench.model_flops` on the meta device (no compute).
    Recomputation by checkpointing is not counted (model FLOPs)."""
    import torch

    from piti_core.bench import _inputs, model_flops
    from piti_core.models.build import build_base, build_upsampler
    from piti_core.train.recipe import stage_parameters

    build, ucfg = (build_base, cfg.model) if which == "base" else (build_upsampler, cfg.upsampler)
    with torch.device("meta"):
        model = build(_with_checkpointing(cfg, False), cond_channels)
    stage_parameters(model, stage)
    return model_flops(model, _inputs(cfg, ucfg, rows, cond_channels, torch.device("meta"), seed))


def _measure(fn: Callable[[], Any], *, steps: int, warmup: int, device,
             probe: Callable[[], float] | None = None) -> dict[str, Any]:
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup`` untimed ones (the first of them,
    where compilation and first allocations happen, is reported apart), and the peak memory meanwhile.

    With ``probe`` (a matmul rate, FLOP/s), each call is timed on its own right after a probe, and the
    pairs come back as ``paired`` (probe rate, seconds): a step can then be set against the machine's
    speed at that moment rather than the run's median (a shared machine's rate swings within a run).
    """
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - start
    paired = []
    with PeakMemory(device) as mem:
        if probe is None:
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            elapsed = time.perf_counter() - start
        else:
            elapsed = 0.0
            for _ in range(steps):
                rate = probe()
                start = time.perf_counter()
                fn()
                _sync(device)
                paired.append((rate, time.perf_counter() - start))
                elapsed += paired[-1][1]
    out = {"step_s": elapsed / steps, "first_step_s": first, **mem.as_dict()}
    if paired:
        out["paired"] = [{"probe_flops_per_s": rate, "step_s": sec} for rate, sec in paired]
    return out


# ------------------------------------------------------------------------------------------ training
def bench_trainer(cfg, variant: str = "stage2", *, device, batch_size: int = 1, cond_channels: int = 3,
                  seed: int = 0):
    """The training step that the bench times, ready to run: the base model of ``variant`` (its stage's
    frozen/trained split, checkpointing, dtype, compile) on one fixed random batch. Returns
    ``(trainer, model, groups)``; ``trainer.train_step()`` is one full step (loss, AdamW, EMA, clipping),
    ``groups`` the trained parameter groups."""
    import torch

    from piti_core.models.build import build_base
    from piti_core.precision import DTYPES
    from piti_core.train.loop import Trainer
    from piti_core.train.objectives import DiffusionObjective
    from piti_core.train.recipe import stage_parameters

    if variant not in TRAIN_VARIANTS:
        raise UsageError(f"unknown training variant '{variant}'; valid: {', '.join(TRAIN_VARIANTS)}")
    device = torch.device(device)
    stage = _variant_stage(cfg, variant)
    vcfg = _with_checkpointing(cfg, variant == "checkpointing")
    torch.manual_seed(seed)
    model = build_base(vcfg, cond_channels).to(device)
    groups, frozen = stage_parameters(model, stage)
    if variant.startswith("compiled"):
        _compile(model, device, "train")
    g = torch.Generator().manual_seed(seed)
    s, c = cfg.model.image_size, cfg.encoder.cond_size
    batch = {"image": torch.rand(batch_size, 3, s, s, generator=g) * 2 - 1,
             "cond": torch.rand(batch_size, cond_channels, c, c, generator=g) * 2 - 1}
    objective = DiffusionObjective(stage, vcfg, null_condition=torch.ones_like)
    trainer = Trainer(model=model, groups=groups, loss_fn=objective, stream=_Batches(batch), tcfg=vcfg.train,
                      device=device, dtype=DTYPES[_dtype(variant)], aux=objective.aux(), frozen=tuple(frozen))
    return trainer, model, groups


def cpu_bench_step(preset: str, variant: str = "stage2"):
    """Where the docs/scripts that study the bench's CPU training step start: malloc tuned as
    ``piti train`` tunes it, the preset's config and :func:`bench_trainer` on the CPU at batch 1.
    Returns ``(cfg, trainer, model, flops)``, ``flops`` the step's count as the bench makes it."""
    import torch

    from piti_core.config import resolve_config

    keep_freed_memory()
    cfg = resolve_config(preset=preset)
    flops = meta_flops(cfg, "base", _variant_stage(cfg, variant), 1, 3)[0]
    trainer, model, _ = bench_trainer(cfg, variant, device=torch.device("cpu"))
    return cfg, trainer, model, flops


def bench_train_variant(cfg, variant: str, *, device, batch_size: int, steps: int, warmup: int,
                        cond_channels: int, seed: int = 0, probe: Callable[[], float] | None = None) -> dict[str, Any]:
    """Time ``steps`` full training steps (after ``warmup``) of one variant of the base model; with
    ``probe``, each step right after a matmul probe (see :func:`_measure`)."""
    from piti_core.bench import _rss_bytes

    stage = _variant_stage(cfg, variant)
    _release_memory()
    before = _rss_bytes("VmRSS") if device.type == "cpu" else None
    trainer, model, groups = bench_trainer(cfg, variant, device=device, batch_size=batch_size,
                                           cond_channels=cond_channels, seed=seed)
    timing = _measure(trainer.train_step, steps=steps, warmup=warmup, device=device, probe=probe)
    out = {"stage": stage.name, "dtype": _dtype(variant), "checkpointing": variant == "checkpointing",
           "compiled": variant.startswith("compiled"), "images_per_s": batch_size / timing["step_s"],
           "trained_params": sum(p.numel() for _, ps, _ in groups for _, p in ps),
           "params": sum(p.numel() for p in model.parameters()), **timing}
    if before is not None:  # the process before the model existed (python, torch): not the variant's doing
        out["process_before_bytes"] = before
        out["peak_above_process_bytes"] = out["peak_memory_bytes"] - before
    del trainer, model, groups
    _release_memory()
    return out


# ------------------------------------------------------------------------------------------ sampling
def bench_sample_step(cfg, which: str, variant: str, *, device, steps: int, warmup: int, cond_channels: int,
                      seed: int = 0) -> dict[str, Any]:
    """Seconds per sampling step for ONE image: the base model guided (2 rows), or the upsampler (1 row)."""
    import torch

    from piti_core.bench import _inputs
    from piti_core.models.build import build_base, build_upsampler
    from piti_core.generate import prepare_for_sampling
    from piti_core.precision import DTYPES, autocast

    build, ucfg, rows = (build_base, cfg.model, 2) if which == "base" else (build_upsampler, cfg.upsampler, 1)
    _release_memory()
    torch.manual_seed(seed)
    dtype = DTYPES[_dtype(variant)]
    model = prepare_for_sampling(build(cfg, cond_channels).to(device).eval(), dtype, device)  # as piti sample
    if variant.startswith("compiled"):
        _compile(model, device, "sample")
    inputs = _inputs(cfg, ucfg, rows, cond_channels, device, seed)
    with torch.no_grad(), autocast(device, dtype):
        encoded = model.encode(inputs["cond"])

    def evaluate():
        with torch.no_grad(), autocast(device, dtype):
            model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded, inputs.get("low_res"))

    out = {"model": which, "rows": rows, "variant": variant,
           **_measure(evaluate, steps=steps, warmup=warmup, device=device)}
    return out  # the model is freed when this frame goes; the next variant releases the memory first


def recipe_steps(cfg, recipe: dict) -> dict[str, Any]:
    """Model evaluations of one image under ``recipe`` (sampler, steps, upsampler_steps, upsampler_start)."""
    from piti_core.diffusion import build_schedule
    from piti_core.sampling import truncate_schedule

    from piti_core.diffusion.guidance import guided_steps

    base_schedule = build_schedule(cfg.diffusion.schedule, cfg.diffusion.steps, recipe["steps"])
    base = len(base_schedule.timestep_map)
    up_schedule = build_schedule(cfg.diffusion.upsampler_schedule, cfg.diffusion.steps, recipe["upsampler_steps"])
    if recipe["upsampler_start"] < 1.0:
        up_schedule = truncate_schedule(up_schedule, cfg.diffusion.upsampler_schedule, recipe["upsampler_start"])
    interval = tuple(recipe.get("guidance_interval", (0.0, 1.0)))
    guided = guided_steps(base_schedule, interval) if recipe["guided"] else 0
    return {"base_evals": base, "guided_evals": guided, "upsampler_evals": len(up_schedule.timestep_map),
            "guided": recipe["guided"]}


def preset_recipe(cfg) -> dict[str, Any]:
    s = cfg.sample
    return {"sampler": s.sampler, "steps": s.steps, "upsampler_sampler": s.upsampler_sampler,
            "upsampler_steps": s.upsampler_steps, "upsampler_start": s.upsampler_start,
            "guided": s.guidance != "none" and s.guidance_scale != 1, "guidance_interval": s.guidance_interval}


def recipe_cost(cfg, recipe: dict, base_guided_s: float, base_plain_s: float, upsampler_s: float) -> dict:
    """Seconds for one image: base steps × step cost (guided steps: the 2-row pass) + upsampler steps ×
    its cost."""
    n = recipe_steps(cfg, recipe)
    base_s = n["guided_evals"] * base_guided_s + (n["base_evals"] - n["guided_evals"]) * base_plain_s
    up_s = n["upsampler_evals"] * upsampler_s
    return {**recipe, **n, "base_s": base_s, "upsampler_s": up_s, "seconds": base_s + up_s}


# ------------------------------------------------------------------------------------------ the run
def run_compare(cfg, *, device: str = "cpu", batch_size: int = 1, steps: int = 2, warmup: int = 1,
                cond_channels: int = 3, variants: Optional[list[str]] = None, sample: bool = True,
                train: bool = True, seed: int = 0, callback: Optional[Callable[[dict], None]] = None,
                partial: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """All variants in one run; returns a dict (``piti bench --compare --json`` prints it).

    ``partial`` is called with the result so far after every variant (``--json-file`` writes it), so a
    long run that is stopped keeps what it measured. ``train=False`` skips the training steps: the
    variants then only pick the sampling variants (e.g. a GPU lease that times compiled sampling before
    the minutes-long compile of a training step)."""
    import torch

    from piti_core.bench import cpu_info

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if steps < 1 or batch_size < 1 or warmup < 0:
        raise UsageError("steps and batch size must be at least 1, warmup at least 0")
    if not (train or sample):
        raise UsageError("--no-train and --no-sample together leave nothing to time; drop one")
    dev = torch.device(device)
    tuned_malloc = dev.type == "cpu" and keep_freed_memory()  # as piti train / sample run on the CPU
    notify = callback or (lambda info: None)
    partial = partial or (lambda result: None)
    chosen, skipped = default_variants(dev)
    if variants is not None:
        bad = [v for v in variants if v not in TRAIN_VARIANTS]
        if bad:
            raise UsageError(f"unknown variant '{bad[0]}' in --variants; valid: {', '.join(TRAIN_VARIANTS)}")
        chosen = [v for v in TRAIN_VARIANTS if v in variants]  # stage2 first: the reference
        skipped = {k: v for k, v in skipped.items() if k not in variants}
        for name in ("compiled", "compiled-bf16"):
            if name in chosen and compile_unavailable(dev):
                skipped[name] = compile_unavailable(dev)
                chosen.remove(name)
    dtypes = ["fp32"] + (["bf16"] if any(_dtype(v) == "bf16" for v in chosen) else [])
    result: dict[str, Any] = {
        "format": "piti-bench-compare/1", "preset": cfg.preset, "device": dev.type, "batch_size": batch_size,
        "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "keep_freed_memory": tuned_malloc,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_info()["cpu"],
        "matmul": {}, "train": {}, "sample": {}, "skipped": skipped,
    }
    if dev.type == "cpu":  # piti's own CPU convolution paths (layers.Conv2d), so runs can be told apart
        from piti_core.models import layers

        result["cpu_conv_paths"] = {"unfold_max_pixels": layers.UNFOLD_MAX_PIXELS,
                                    "nine_matmul_weight_grad": layers.SHIFT_GRAD}
    if dev.type == "cuda":  # fp32 convolutions use TF32 tensor cores under torch's defaults; matmuls do not
        result["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    probes: dict[str, list] = {dt: [] for dt in dtypes}

    def calibrate():  # before every variant and at the end: the median is robust to a shared machine's swings
        for dt in dtypes:
            rate, size = matmul_rate(dev, dt)
            probes[dt].append(rate)
            result["matmul"][dt] = {"flops_per_s": _median(probes[dt]), "size": size, "probes": list(probes[dt])}

    notify({"phase": "matmul"})
    calibrate()
    flops = {}
    # stage 1 before stage 2: the smaller footprint is measured before the process has grown
    order = sorted(chosen, key=lambda v: 0 if v == "stage1" else 1) if train else []
    for variant in order:
        notify({"phase": f"train {variant}"})
        calibrate()
        # On the CPU each step follows its own matmul probe: the shared machine's phase changes within a
        # run, and the run's median probe alone let slow moments flatter the fractions (performance.md).
        # On a GPU the rate is steady, and an 8192² probe's buffers would enter the peak-memory window.
        probe = (lambda dt=_dtype(variant): matmul_rate(dev, dt)[0]) if dev.type == "cpu" else None
        r = bench_train_variant(cfg, variant, device=dev, batch_size=batch_size, steps=steps, warmup=warmup,
                                cond_channels=cond_channels, seed=seed, probe=probe)
        key = r["stage"]
        if key not in flops:
            flops[key] = meta_flops(cfg, "base", _stage(cfg, key), batch_size, cond_channels, seed)[0]
        r["flops_per_step"] = flops[key]
        r["flops_per_s"] = flops[key] / r["step_s"]
        if r.get("paired"):
            r["paired_fraction_of_matmul"] = _median([flops[key] / p["step_s"] / p["probe_flops_per_s"]
                                                      for p in r["paired"]])
        result["train"][variant] = r
        partial(result)
    ref = result["train"].get("stage2")
    for r in result["train"].values():
        if ref is not None:
            r["time_vs_stage2"] = r["step_s"] / ref["step_s"]
            r["memory_vs_stage2"] = (r["peak_memory_bytes"] / ref["peak_memory_bytes"]
                                     if r["peak_memory_bytes"] and ref["peak_memory_bytes"] else None)
            if "peak_above_process_bytes" in r and "peak_above_process_bytes" in ref:
                r["memory_above_process_vs_stage2"] = r["peak_above_process_bytes"] / ref["peak_above_process_bytes"]
    if sample:
        sample_variants = ["eager"] + [v for v in ("bf16", "compiled", "compiled-bf16") if v in chosen]
        for which in ("base", "upsampler"):
            rows = 2 if which == "base" else 1  # the guided base runs [cond; null] in one pass
            eval_flops = meta_flops(cfg, which, _stage(cfg, "stage2"), rows, cond_channels, seed)[1]
            for variant in sample_variants:
                notify({"phase": f"sample {which} {variant}"})
                calibrate()
                r = bench_sample_step(cfg, which, variant, device=dev, steps=steps, warmup=warmup,
                                      cond_channels=cond_channels, seed=seed)
                r["dtype"] = _dtype(variant)
                r["flops_per_step"] = eval_flops
                result["sample"][f"{which}-{variant}"] = r
                partial(result)
            eager = result["sample"][f"{which}-eager"]["step_s"]
            for variant in sample_variants:
                entry = result["sample"][f"{which}-{variant}"]
                entry["speedup_vs_eager"] = eager / entry["step_s"]
        base2 = result["sample"]["base-eager"]["step_s"]
        base1 = base2 / 2  # an unguided step runs one row; per-row cost at batch 2 (an upper bound on speed)
        up = result["sample"]["upsampler-eager"]["step_s"]
        official = recipe_cost(cfg, OFFICIAL_RECIPE, base2, base1, up)
        default = recipe_cost(cfg, preset_recipe(cfg), base2, base1, up)
        result["recipes"] = {"official": official, "default": default,
                             "default_vs_official": default["seconds"] / official["seconds"]}
    calibrate()
    for r in (*result["train"].values(), *result["sample"].values()):
        r["fraction_of_matmul"] = r["flops_per_step"] / r["step_s"] / result["matmul"][r["dtype"]]["flops_per_s"]
    result["checks"] = checks(result)
    return result


def _median(values: list) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def checks(result: dict) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this run (value, target, ok)."""
    out = []
    train = result["train"]

    def add(name, value, op, target):
        if value is None:
            return
        ok = value >= target if op == ">=" else value <= target
        out.append({"name": name, "value": value, "target": f"{op} {target}", "ok": bool(ok)})

    if "stage2" in train:  # each step against the probe just before it where the bench paired them (CPU)
        paired = train["stage2"].get("paired_fraction_of_matmul")
        if paired is not None:
            add("stage 2 fraction of the fp32 matmul rate (each step vs the probe before it)", paired, ">=", 0.8)
        else:
            add("stage 2 fraction of the fp32 matmul rate", train["stage2"]["fraction_of_matmul"], ">=", 0.8)
    if "stage2" in train and "bf16" in train:
        add("bf16 throughput vs fp32", train["stage2"]["step_s"] / train["bf16"]["step_s"], ">=", 1.7)
    if "stage2" in train and "compiled-bf16" in train:  # the GPU configuration (piti train --compile, auto)
        add("compiled bf16 throughput vs eager fp32", train["stage2"]["step_s"] / train["compiled-bf16"]["step_s"],
            ">=", 1.7)
    if "stage1" in train:
        add("stage 1 step time vs stage 2", train["stage1"].get("time_vs_stage2"), "<=", 0.7)
        add("stage 1 peak memory vs stage 2", train["stage1"].get("memory_vs_stage2"), "<=", 0.6)
    if "recipes" in result:
        add("default sampling cost vs the official recipe", result["recipes"]["default_vs_official"], "<=", 0.1)
    return out
