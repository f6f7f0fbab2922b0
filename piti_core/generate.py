"""`piti sample`: condition files -> base samples -> upsampled samples, written with their settings.

Writes into the output folder, for every input ``<stem>``: ``<stem>.png`` (the final image, upsampled
when the run has an upsampler), ``<stem>_base.png`` (the base model's sample) and
``<stem>_condition.png`` (what the task made of the input); plus ``grid.png`` (condition | base |
final per row) and ``settings.json`` with everything needed to make the same images again, and the
list of the files written (``files``): a later ``--overwrite`` removes exactly those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import attrs
import torch

from piti_core.errors import CheckpointError, DataError
from piti_core.host_memory import keep_freed_memory
from piti_core.sampling import steps_run
from piti_core.tasks import DEFAULT_INPUT_SUFFIXES

IMAGE_SUFFIXES = DEFAULT_INPUT_SUFFIXES  # what a task that names no suffixes of its own reads
SAMPLE_FORMAT = "piti-sample/1"  # settings.json of `piti sample`
SETTINGS_JSON = "settings.json"


def list_inputs(source: str | Path, task=None, cfg=None) -> list[Path]:
    """A condition file, or the files of a folder (sorted) with a suffix ``task`` reads
    (:meth:`~piti_core.tasks.Task.input_suffixes` with the run's ``cfg``; images and .npy without a task)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        suffixes = input_suffixes(task, cfg) if task is not None else IMAGE_SUFFIXES
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            reader = f"the {task.name} task reads" if task is not None else "piti reads"
            raise DataError(f"{path}: no condition files in this folder ({reader} {', '.join(suffixes)})")
        return files
    raise DataError(f"{path}: no such file or folder")


def input_suffixes(task, cfg) -> tuple[str, ...]:
    """``task.input_suffixes(cfg)`` in lower case with a leading dot; a PluginError naming the task when it
    is not a non-empty list of suffixes."""
    from piti_core.errors import PluginError
    from piti_core.tasks import task_origin

    declared = task.input_suffixes(cfg)
    if isinstance(declared, str) or not declared or not all(isinstance(s, str) and s.strip(".") for s in declared):
        raise PluginError(f"{task_origin(task)}: input_suffixes() returned {declared!r}, not a list of file suffixes "
                          "such as ('.png', '.json'); this is a bug in the plugin: report it to its authors")
    return tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in declared)


def run_task(run_dir):
    """The installed task of a run directory (a CheckpointError naming the run when there is none)."""
    from piti_core.plugins import get_plugin_manager
    from piti_core.runs import read_run_meta

    return installed_run_task(get_plugin_manager(), run_dir, read_run_meta(run_dir))


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

    Checks the sampler and guidance names, that the run has a base model and that its task is installed
    (a CheckpointError naming the run otherwise, ``verb`` saying what the caller does), loads the base and upsampler on ``device``,
    prepares them for sampling (:func:`prepare_for_sampling`) and compiles them with ``compile``.
    Shared by ``piti sample`` and ``piti eval``.
    """
    from piti_core.diffusion import get_guidance
    from piti_core.plugins import get_plugin_manager
    from piti_core.precision import resolve_dtype
    from piti_core.runs import load_run, read_run_meta, run_sampler

    run_sampler(run_dir, settings, "sampler"), run_sampler(run_dir, settings, "upsampler_sampler")
    get_guidance(settings.guidance)
    host = get_plugin_manager()
    meta = read_run_meta(run_dir)
    names = [n for n in ("base", "upsampler") if n in meta["models"]]
    if "base" not in names:
        raise CheckpointError(f"{run_dir} has no base model (models: {', '.join(meta['models']) or 'none'}); "
                              f"{verb} a run made by `piti train` or `piti convert`")
    task = installed_run_task(host, run_dir, meta)
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


def installed_run_task(host, run_dir, meta: dict):
    """The installed task a run was made for, or a CheckpointError naming it and the installed ones."""
    name = meta.get("task")
    if isinstance(name, str) and name in host.tasks:
        return host.task(name)
    from piti_core.runs import require_run_task

    require_run_task(run_dir, meta, host)  # names the distribution to install when the run recorded it
    valid = ", ".join(sorted(host.tasks)) or "none"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{run_dir}/run.json names no task; re-create the run with `piti train` or "
                              f"`piti convert --task NAME` (installed tasks: {valid})")
    raise CheckpointError(f"{run_dir} was made for task '{name}', which no installed plugin provides; install "
                          f"that task's plugin (installed tasks: {valid})")


def unused_folder(path: str | Path) -> Path:
    """``path`` when nothing is there, else the first of ``path-2``, ``path-3``, ... that does not exist
    (a default output folder that never mixes with an earlier one)."""
    path = Path(path)
    n = 1
    candidate = path
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def sample_files(run_dir: str | Path, inputs: list[Path], out_dir: str | Path, settings, *, device: str = "cpu",
                 dtype: str = "fp32", overwrite: bool = False, compile: bool = False,
                 callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Sample every input with the run's models and write the results; returns the written paths.

    ``settings`` is a :class:`piti_core.config.SampleConfig` (the run's ``sample`` section with the
    command line's changes); the run's own config supplies everything else. ``compile`` runs the
    decoders through torch.compile (:func:`piti_core.compile.compile_model`, docs/compile.md).

    The output folder follows :class:`piti_core.io.OutputFolder`: it may not hold an input file, an
    existing file is replaced only when an earlier ``piti sample`` listed it in its settings.json (and
    ``overwrite``), and nothing is written unless every image was sampled.
    """
    from piti_core.io import OutputFolder, atomic_write_text

    out_dir = Path(out_dir)
    stems = _unique_stems(inputs)
    folder = OutputFolder(out_dir, owned=earlier_sample_outputs(out_dir), overwrite=overwrite, inputs=inputs,
                          command="piti sample")
    folder.claim([*(name for stem in stems for name in output_names(stem).values()), "grid.png", SETTINGS_JSON])
    run, task, names, compute = load_cascade(run_dir, settings, device=device, dtype=dtype, compile=compile,
                                             verb="sample")
    device = torch.device(device)
    cfg = attrs.evolve(run.config, sample=settings)
    conds = [preprocess_checked(task, p, cfg) for p in inputs]  # bad inputs fail here, before any sampling
    with folder:
        written = _sample_into(folder.stage, out_dir, run, task, conds, inputs, stems, cfg, device=device,
                               compute=compute, callback=callback)
        record = {"format": SAMPLE_FORMAT, "run": str(Path(run_dir)), "task": task.name, "models": names,
                  "settings": {**attrs.asdict(settings), "device": str(device), "dtype": dtype, "compile": compile},
                  "steps_run": steps_run(cfg, upsampler="upsampler" in names), "outputs": written, "files": sorted(p.name for p in folder.stage.iterdir()) + [SETTINGS_JSON]}
        atomic_write_text(folder.stage / SETTINGS_JSON, json.dumps(record, indent=2) + "\n")
    return {"out": str(out_dir), "grid": str(out_dir / "grid.png"), "outputs": written}


def preprocess_checked(task, source, cfg) -> torch.Tensor:
    """``task.preprocess(source, cfg)`` once it matches the task's ConditionSpec
    (:meth:`~piti_core.tasks.Task.check_preprocessed`: a PluginError otherwise), as float32."""
    return task.check_preprocessed(task.preprocess(source, cfg), cfg, source).float()


def output_names(stem: str) -> dict[str, str]:
    """The files ``piti sample`` writes for one input: final image, base sample, condition picture."""
    return {"image": f"{stem}.png", "base": f"{stem}_base.png", "condition": f"{stem}_condition.png"}


def earlier_sample_outputs(out_dir: Path) -> set[str]:
    """The files an earlier ``piti sample`` wrote into ``out_dir``, from its settings.json (empty when
    there is none, or when settings.json is not a piti sample record)."""
    path = Path(out_dir) / SETTINGS_JSON
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    legacy = isinstance(record, dict) and {"run", "task", "settings", "outputs"} <= set(record)
    if not isinstance(record, dict) or not (record.get("format") == SAMPLE_FORMAT or legacy):
        return set()
    names = record.get("files")
    if not isinstance(names, list):  # written before settings.json listed its files: the outputs' names
        outputs = record.get("outputs") if isinstance(record.get("outputs"), list) else []
        names = [Path(v).name for o in outputs if isinstance(o, dict) for k, v in o.items()
                 if k != "input" and isinstance(v, str)]
    plain = {n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..")}
    return plain | {"grid.png", SETTINGS_JSON}


def _sample_into(stage: Path, out_dir: Path, run, task, conds, inputs, stems, cfg, *, device, compute,
                 callback) -> list[dict]:
    """Sample ``conds`` in batches and write every image into ``stage``; returns the outputs' final paths."""
    from piti_core.sampling import save_grid

    settings = cfg.sample
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    rows, written = [], []
    total = len(inputs)
    for start in range(0, total, settings.batch_size):
        cond = torch.cat(conds[start:start + settings.batch_size]).to(device)
        batch = f"images {start + 1}-{start + cond.shape[0]} of {total}"
        base, final = sample_cascade(run, task, cond, cfg, generator=gen, dtype=compute, callback=callback,
                                     label=batch)
        for i in range(cond.shape[0]):
            names = output_names(stems[start + i])
            vis = task.visualize(cond[i].float().cpu(), cfg)
            image, base_image = ((t[i].float().cpu() + 1) / 2 for t in (final, base))
            save_png(stage / names["image"], image)
            save_png(stage / names["base"], base_image)
            save_png(stage / names["condition"], vis)
            rows.append([vis, base_image, image])
            written.append({"input": str(inputs[start + i]), **{k: str(out_dir / v) for k, v in names.items()}})
    save_grid(stage / "grid.png", rows)
    return written


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
    check_finite(base, run, "base", dtype)
    final = base
    if "upsampler" in run.models:
        final = sample_upsampler(run.models["upsampler"], base, cond, cfg, generator=generator,
                                 callback=_stage(callback, "upsampler", label), dtype=dtype)
        check_finite(final, run, "upsampler", dtype)
    return base, final


def check_finite(samples: torch.Tensor, run, model: str, dtype) -> None:
    """Raise a CheckpointError naming the run when ``model``'s samples hold NaN or inf: a wrong image
    is never written as a result."""
    if bool(torch.isfinite(samples).all()):
        return
    hint = " or sample with --dtype fp32" if dtype not in (torch.float32, "fp32") else ""
    raise CheckpointError(f"{run.path}: the {model} model produced non-finite (NaN/inf) samples; its weights are "
                          f"damaged or diverged: re-create the run with `piti train` or `piti convert`{hint}")


def _stage(callback, name: str, batch: str):
    if callback is None:
        return None
    return lambda event: callback({"event": "sample-step", "stage": name, "batch": batch, **event})


def _unique_stems(paths: list[Path]) -> list[str]:
    """One output stem per input: its file stem, with ``-2``, ``-3`` ... when one of its output names is
    taken by an earlier input's (``a.png`` and ``a.jpg``; ``x.png``'s ``x_base.png`` and the input
    ``x_base.png``) or is the grid's or settings.json's."""
    taken = {"grid.png", SETTINGS_JSON}
    out = []
    for p in paths:
        stem, n = p.stem, 1
        while taken & set(output_names(stem).values()):
            n += 1
            stem = f"{p.stem}-{n}"
        taken.update(output_names(stem).values())
        out.append(stem)
    return out


def save_png(path: Path, img: torch.Tensor) -> None:
    """Write a (3, H, W) image in [0, 1] as an 8-bit PNG, atomically."""
    import numpy as np
    from PIL import Image

    from piti_core.io import atomic_write

    arr = (img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
