"""`piti sample`: condition files -> base samples -> upsampled samples, written with their settings.

Writes into the output folder, for every input ``<stem>``: ``<stem>.png`` (the final image, upsampled
when the run has an upsampler), ``<stem>_base.png`` (the base model's sample) and
``<stem>_condition.png`` (what the task made of the input); plus ``grid.png`` (condition | base |
final per row) and ``settings.json`` with everything needed to make the same images again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from piti_core.errors import DataError, UsageError
from piti_core.host_memory import keep_freed_memory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")


def list_inputs(source: str | Path) -> list[Path]:
    """A condition file, or every image/.npy file of a folder (sorted)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no condition files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    raise DataError(f"{path}: no such file or folder")


def prepare_for_sampling(model: torch.nn.Module, compute: torch.dtype, device) -> torch.nn.Module:
    """Make a model that only samples ready, in place: conv/linear weights stored in the compute dtype
    once (bit-identical to autocast's per-step cast, :func:`~piti_core.precision.cast_for_inference`)
    and wide UNets channels-last on the CPU
    (:func:`~piti_core.models.inference_layout.channels_last_for_cpu_sampling`). Used by
    :func:`load_cascade` and by ``piti bench --compare``'s sampling steps, so both time the same model."""
    from piti_core.models.inference_layout import channels_last_for_cpu_sampling
    from piti_core.precision import cast_for_inference

    cast_for_inference(model, compute)
    channels_last_for_cpu_sampling(model, device)
    return model


def load_cascade(run_dir, settings, *, device, dtype: str, compile: bool = False, verb: str = "sample"):
    """The run's models ready to sample with ``settings``: ``(run, task, names, compute dtype)``.

    Checks the sampler and guidance names and that the run has a base model (one line naming the run
    otherwise, ``verb`` saying what the caller does), loads the base and upsampler on ``device``,
    prepares them for sampling (:func:`prepare_for_sampling`) and compiles them with ``compile``.
    Shared by ``piti sample`` and ``piti eval``.
    """
    from piti_core.diffusion import get_guidance, get_sampler
    from piti_core.plugins import get_plugin_manager
    from piti_core.precision import resolve_dtype
    from piti_core.runs import load_run, read_run_meta

    get_sampler(settings.sampler), get_sampler(settings.upsampler_sampler), get_guidance(settings.guidance)
    host = get_plugin_manager()
    meta = read_run_meta(run_dir)
    task = host.task(meta.get("task") or "")
    names = [n for n in ("base", "upsampler") if n in meta["models"]]
    if "base" not in names:
        raise UsageError(f"{run_dir} has no base model (models: {', '.join(meta['models'])}); "
                         f"{verb} a run made by `piti train` or `piti convert`")
    device = torch.device(device)
    compute = resolve_dtype(dtype, device)
    if device.type == "cpu":  # reuse each step's freed memory (no page faults, piti_core.host_memory)
        keep_freed_memory()
    run = load_run(run_dir, names=names, device=device, extra_sections=host.task_sections())
    for model in run.models.values():
        prepare_for_sampling(model, compute, device)
    if compile:
        from piti_core.compile import compile_model

        for model in run.models.values():
            compile_model(model, device=device, purpose="sample")
    return run, task, names, compute


def sample_files(run_dir: str | Path, inputs: list[Path], out_dir: str | Path, settings, *, device: str = "cpu",
                 dtype: str = "fp32", overwrite: bool = False, compile: bool = False,
                 callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Sample every input with the run's models and write the results; returns the written paths.

    ``settings`` is a :class:`piti_core.config.SampleConfig` (the run's ``sample`` section with the
    command line's changes); the run's own config supplies everything else. ``compile`` runs the
    decoders through torch.compile (:func:`piti_core.compile.compile_model`, docs/compile.md).
    """
    from piti_core.io import check_writable
    from piti_core.sampling import save_grid

    out_dir = Path(out_dir)
    check_writable(out_dir, overwrite)
    run, task, names, compute = load_cascade(run_dir, settings, device=device, dtype=dtype, compile=compile,
                                             verb="sample")
    device = torch.device(device)
    cfg = attrs.evolve(run.config, sample=settings)
    conds = [task.preprocess(p, cfg) for p in inputs]  # bad inputs fail here, before any sampling
    stems = _unique_stems(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    rows, written = [], []
    total = len(inputs)
    for start in range(0, total, settings.batch_size):
        cond = torch.cat(conds[start:start + settings.batch_size]).to(device)
        batch = f"images {start + 1}-{start + cond.shape[0]} of {total}"
        base, final = sample_cascade(run, task, cond, cfg, generator=gen, dtype=compute, callback=callback,
                                     label=batch)
        for i in range(cond.shape[0]):
            stem = stems[start + i]
            vis = task.visualize(cond[i].float().cpu(), cfg)
            image, base_image = ((t[i].float().cpu() + 1) / 2 for t in (final, base))
            files = {"image": out_dir / f"{stem}.png", "base": out_dir / f"{stem}_base.png",
                     "condition": out_dir / f"{stem}_condition.png"}
            save_png(files["image"], image)
            save_png(files["base"], base_image)
            save_png(files["condition"], vis)
            rows.append([vis, base_image, image])
            written.append({"input": str(inputs[start + i]), **{k: str(v) for k, v in files.items()}})
    save_grid(out_dir / "grid.png", rows)
    record = {"run": str(Path(run_dir)), "task": task.name, "models": names,
              "settings": {**attrs.asdict(settings), "device": str(device), "dtype": dtype, "compile": compile},
              "outputs": written}
    from piti_core.io import atomic_write_text

    atomic_write_text(out_dir / "settings.json", json.dumps(record, indent=2) + "\n")
    return {"out": str(out_dir), "grid": str(out_dir / "grid.png"), "outputs": written}


def sample_cascade(run, task, cond: torch.Tensor, cfg, *, generator: torch.Generator, dtype,
                   callback: Callable[[dict], None] | None = None,
                   label: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's samples for the preprocessed condition batch ``cond``, then the upsampler's from
    them (when the run has one); returns ``(base, final)`` in [−1, 1] (``final is base`` without an
    upsampler).

    ``callback`` receives ``{"event": "sample-step", "stage": "base" | "upsampler", "batch": label, ...}``
    after every sampler step. Shared by ``piti sample`` and ``piti eval``.
    """
    from piti_core.sampling import sample_base, sample_upsampler

    base = sample_base(run.models["base"], cond, task.null_condition(cond), cfg, generator=generator,
                       callback=_stage(callback, "base", label), dtype=dtype)
    final = base
    if "upsampler" in run.models:
        final = sample_upsampler(run.models["upsampler"], base, cond, cfg, generator=generator,
                                 callback=_stage(callback, "upsampler", label), dtype=dtype)
    return base, final


def _stage(callback, name: str, batch: str):
    if callback is None:
        return None
    return lambda event: callback({"event": "sample-step", "stage": name, "batch": batch, **event})


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        out.append(p.stem if n == 0 else f"{p.stem}-{n + 1}")
    return out


def save_png(path: Path, img: torch.Tensor) -> None:
    """Write a (3, H, W) image in [0, 1] as an 8-bit PNG, atomically."""
    import numpy as np
    from PIL import Image

    from piti_core.io import atomic_write

    arr = (img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
