"""Run directories: ``config.json`` + ``run.json`` + one safetensors file per model.

``run.json``::

    {"format": "piti-run", "version": 1, "task": "mask", "cond_channels": 3,
     "models": {"base": "base.safetensors", "upsampler": "upsampler.safetensors"},
     "source": "convert"}

Model names are those of :data:`piti_core.models.build.BUILDERS` (``base``, ``upsampler``,
``text_base``, ``text_upsampler``). Every file is written atomically and ``run.json`` last, so a run
directory with a ``run.json`` is complete. Extra keys in ``run.json`` (``origin``, ``step`` ...) are kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import attrs

from piti_core.errors import CheckpointError

RUN_FORMAT = "piti-run"
RUN_VERSION = 1
RUN_JSON = "run.json"
CONFIG_JSON = "config.json"


@attrs.frozen
class Run:
    path: Path
    config: Any  # PitiConfig
    meta: dict
    models: dict  # name -> PitiModel


def save_run(run_dir, config, models: Mapping[str, Any], *, task: str, cond_channels: Optional[int],
             source: str, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``config`` and ``models`` (name → nn.Module or state dict) into ``run_dir``.

    Overwrite protection is the caller's job (:class:`piti_core.io.OutputFolder`, :func:`run_files`).
    """
    from safetensors.torch import save_file

    from piti_core.config import save_config
    from piti_core.io import atomic_write, atomic_write_text
    from piti_core.models.build import BUILDERS

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, model in models.items():
        if name not in BUILDERS:
            raise CheckpointError(f"cannot save model '{name}'; known models: {', '.join(BUILDERS)}")
        state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        fname = f"{name}.safetensors"
        meta = {"format": RUN_FORMAT, "model": name}
        atomic_write(run_dir / fname, lambda tmp, s=state, m=meta: save_file(s, str(tmp), metadata=m))
        files[name] = fname
    save_config(config, run_dir / CONFIG_JSON)
    info = {"format": RUN_FORMAT, "version": RUN_VERSION, "task": task, "cond_channels": cond_channels,
            "models": files, "source": source}
    info.update(extra or {})
    atomic_write_text(run_dir / RUN_JSON, json.dumps(info, indent=2) + "\n")
    return run_dir


def read_run_meta(run_dir) -> dict:
    """The validated ``run.json`` of ``run_dir``: a piti run file whose model files are plain paths
    inside ``run_dir``."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        if _is_unfinished_training(Path(run_dir)):
            raise CheckpointError(f"{run_dir} is an unfinished training run (no {RUN_JSON} yet); finish it with "
                                  f"`{_resume_command(Path(run_dir))}`, then use it")
        raise CheckpointError(f"{run_dir} is not a piti run directory (no {RUN_JSON}); "
                              "create one with `piti convert` or `piti train`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path} is not a piti run file (format must be '{RUN_FORMAT}')")
    if meta.get("version") != RUN_VERSION:
        raise CheckpointError(f"{path} has run format version {meta.get('version')}; this piti reads version {RUN_VERSION}")
    if not isinstance(meta.get("models"), dict):
        raise CheckpointError(f"{path} has no 'models' table")
    for name, file in meta["models"].items():
        _check_model_file(path, name, file)
    return meta


def run_files(run_dir) -> set[str]:
    """The files a piti run in ``run_dir`` consists of (run.json, config.json and its model files), from its
    run.json; empty when ``run_dir`` holds no valid run. What ``piti convert --overwrite`` may replace."""
    try:
        meta = read_run_meta(run_dir)
    except CheckpointError:
        return set()
    return {RUN_JSON, CONFIG_JSON, *meta["models"].values()}


def _check_model_file(path: Path, name: str, file) -> None:
    """Refuse a model path that is not a plain relative path inside the run directory (``../x``, ``/x``)."""
    from piti_core.io import relative_name

    if not isinstance(file, str) or not file.strip():
        raise CheckpointError(f"{path}: model '{name}' must be a file name inside the run directory, got {file!r}")
    if relative_name(file) is None:
        raise CheckpointError(f"{path}: model '{name}' points at {file!r}, outside the run directory; a run's "
                              "model files must lie inside it (re-create the run with `piti convert` or `piti train`)")


def _is_unfinished_training(run_dir: Path) -> bool:
    """A training run directory without run.json: config.json and checkpoints or progress, no result yet."""
    marks = ("checkpoints", "progress.json", "stages", "metrics.jsonl")
    return (run_dir / CONFIG_JSON).is_file() and any((run_dir / m).exists() for m in marks)


def _resume_command(run_dir: Path) -> str:
    """The command that continues an unfinished training run: ``piti pretrain`` for a prior (prior.json
    says so, or its stages are named ``prior-*``), else ``piti train`` (with ``--task`` when the run does
    not record its task)."""
    import shlex

    out = shlex.quote(str(run_dir))
    source = _json_file(run_dir / "prior.json").get("source")
    if source == "pretrain" or any(name.startswith("prior-") for name in _stage_names(run_dir)):
        return f"piti pretrain --out {out} --resume"
    task = _json_file(run_dir / CONFIG_JSON).get("task")
    if isinstance(task, str) and task:  # the run records its task
        return f"piti train --out {out} --resume"
    return f"piti train --task <its task> --out {out} --resume"


def _stage_names(run_dir: Path) -> list[str]:
    """Stage names a training run directory mentions: finished stages, and the latest checkpoint's."""
    names = [p.stem for p in (run_dir / "stages").glob("*.safetensors")]
    done = _json_file(run_dir / "progress.json").get("done")
    names += [d for d in done if isinstance(d, str)] if isinstance(done, list) else []
    latest = _json_file(run_dir / "checkpoints" / "latest.json").get("checkpoint")
    if isinstance(latest, str) and "/" not in latest and "\\" not in latest:
        stage = _json_file(run_dir / "checkpoints" / latest / "trainer.json").get("stage")
        names += [stage] if isinstance(stage, str) else []
    return names


def _json_file(path: Path) -> dict:
    """A small JSON object file, or {} when it is missing or unreadable (used for hints only)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run_config(run_dir, extra_sections: Optional[Mapping[str, type]] = None):
    """The config of a run directory (its run.json checked first); a missing or broken config.json is a
    :class:`CheckpointError` (exit 1), as every other flaw of a run directory."""
    from piti_core.config import load_config
    from piti_core.errors import ConfigError

    read_run_meta(run_dir)
    if extra_sections is None:
        from piti_core.plugins import get_plugin_manager

        extra_sections = get_plugin_manager().task_sections()
    try:
        return load_config(Path(run_dir) / CONFIG_JSON, extra_sections)
    except ConfigError as exc:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_JSON} is damaged or from another piti: {exc}") from None


def load_run(run_dir, names: Optional[Iterable[str]] = None, device="cpu",
             extra_sections: Optional[Mapping[str, type]] = None) -> Run:
    """Read the config and the models ``names`` (default: all listed) of ``run_dir``.

    ``extra_sections`` (task name → config class) defaults to the installed task plugins' sections.

    Models are built on the meta device and take the stored tensors directly; they come back in eval mode.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from piti_core.models.build import build_model, load_weights

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    config = load_run_config(run_dir, extra_sections)  # default: the installed task plugins' sections
    wanted = list(meta["models"]) if names is None else list(names)
    models = {}
    for name in wanted:
        if name not in meta["models"]:
            raise CheckpointError(f"{run_dir} has no model '{name}'; it holds: {', '.join(meta['models']) or 'none'}")
        path = run_dir / meta["models"][name]
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {run_dir / RUN_JSON})")
        try:
            state = load_file(str(path), device=str(device))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} cannot be read as safetensors: {exc}") from None
        with torch.device("meta"):
            model = build_model(name, config, meta.get("cond_channels"))
        models[name] = load_weights(model, state, where=str(path), assign=True).eval()
    return Run(path=run_dir, config=config, meta=meta, models=models)
