"""Run directories: ``config.json`` + ``run.json`` + one safetensors file per model.

``run.json``::

    {"format": "piti-run", "version": 1, "task": "mask", "cond_channels": 3,
     "models": {"base": "base.safetensors", "upsampler": "upsampler.safetensors"},
     "source": "convert",
     "plugins": {"task": {"name": "mask", "plugin": "mask", "distribution": "piti", "version": "0.1.0",
                          "module": "piti_plugins.mask"}, "sampler": {...}, "upsampler_sampler": {...}}}

``plugins`` records which plugin provided the run's task and samplers, so a run opened where one is
missing says what to install (:func:`require_run_task`); runs written before it was recorded lack it.
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
            "models": files, "source": source, "plugins": plugins_record(config, task)}
    info.update(extra or {})
    atomic_write_text(run_dir / RUN_JSON, json.dumps(info, indent=2) + "\n")
    return run_dir


RECORDED_SAMPLERS = ("sampler", "upsampler_sampler")  # keys of config.sample that name a sampler


def plugins_record(config, task: str, host=None) -> dict[str, dict]:
    """What ``run.json`` records under ``plugins``: for the run's task (key ``task``) and the samplers of
    ``config.sample`` (keys ``sampler``, ``upsampler_sampler``), the plugin that provides it: ``{"name",
    "plugin" (entry-point name), "distribution", "version", "module"}``. Things no loaded plugin provides
    are left out."""
    if host is None:
        from piti_core.plugins import get_plugin_manager

        host = get_plugin_manager()
    wanted = {"task": ("tasks", task)}
    sample = getattr(config, "sample", None)
    for key in RECORDED_SAMPLERS:
        wanted[key] = ("samplers", getattr(sample, key, None))
    out = {}
    for key, (kind, name) in wanted.items():
        record = host.record_of(kind, name) if isinstance(name, str) and name else None
        if record is not None:
            out[key] = {"name": name, "plugin": record.name, "distribution": record.distribution,
                        "version": record.version, "module": record.module}
    return out


def require_run_task(run_dir, meta: Mapping[str, Any], host=None, installed: Optional[Iterable[str]] = None) -> None:
    """A CheckpointError when the task ``run.json`` names is not installed here (not among ``installed``,
    default: the plugin host's tasks), naming the task and what to install (from the run's ``plugins``
    record; runs written before piti recorded it: without version)."""
    name = meta.get("task")
    if host is None:
        from piti_core.plugins import get_plugin_manager

        host = get_plugin_manager()
    if not isinstance(name, str) or not name or name in (host.tasks if installed is None else installed):
        return
    entry = _recorded(meta, "task", name)
    if entry is None:
        valid = ", ".join(sorted(host.tasks)) or "none"
        raise CheckpointError(f"task '{name}' of {run_dir} is not installed and the run does not record which "
                              f"plugin provides it (a run of an earlier piti); install that task's plugin "
                              f"(installed tasks: {valid})")
    raise CheckpointError(missing_plugin_message(f"task '{name}' of {run_dir}", entry, host))


def _recorded(meta: Mapping[str, Any], key: str, name: str) -> Optional[dict]:
    """The ``plugins`` entry ``key`` of ``meta`` when it is about ``name``, else None."""
    plugins = meta.get("plugins")
    entry = plugins.get(key) if isinstance(plugins, Mapping) else None
    return entry if isinstance(entry, dict) and entry.get("name") == name else None


def missing_plugin_message(what: str, entry: Mapping[str, Any], host) -> str:
    """One line saying where ``what`` (a task or sampler a run needs) comes from and what to do to get it."""
    dist, version, plugin = entry.get("distribution"), entry.get("version"), entry.get("plugin")
    if not isinstance(dist, str) or not dist:  # loaded with -p (or added in-process) when the run was made
        module = entry.get("module") or plugin
        return f"{what} comes from the plugin module '{module}', which is not loaded: add `-p {module}` (piti -p {module} ...)"
    source = f"{dist} {version}" if version else dist
    pin = f"{dist}=={version}" if version else dist
    record = host.records.get(plugin) if isinstance(plugin, str) else None
    if record is not None and record.status != "ok":
        return f"{what} comes from {source}, whose plugin '{plugin}' did not load here ({record.message}); see `piti plugins`"
    present = next((r for r in host.records.values() if r.distribution == dist and r.status == "ok"), None)
    if present is not None:
        return (f"{what} comes from {source}; the installed {dist} {present.version} does not provide it: "
                f"pip install {pin}")
    return f"{what} comes from {source}, which is not installed: pip install {pin}"


def run_sampler(run_dir, settings, key: str = "sampler"):
    """The sampler ``settings.<key>`` names, from the plugin host; when the run's own sampler is missing, a
    CheckpointError saying which plugin the run recorded for it and what to install."""
    from piti_core.errors import ConfigError
    from piti_core.plugins import get_plugin_manager

    host = get_plugin_manager()
    name = getattr(settings, key)
    try:
        return host.sampler(name, f"sample.{key}")
    except ConfigError:
        entry = _recorded(_json_file(Path(run_dir) / RUN_JSON), key, name)
        if entry is None:
            raise
        what = f"sampler '{name}' (sample.{key}) of {run_dir}"
        raise CheckpointError(f"{missing_plugin_message(what, entry, host)}; or choose another with "
                              f"--{key.replace('_', '-')}") from None


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

    meta = read_run_meta(run_dir)
    require_run_task(run_dir, meta, installed=extra_sections)
    if extra_sections is None:
        from piti_core.plugins import get_plugin_manager

        extra_sections = get_plugin_manager().task_sections()
    try:
        return load_config(Path(run_dir) / CONFIG_JSON, extra_sections)
    except ConfigError as exc:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_JSON} is damaged or from another piti: {exc}") from None


def _model_task(meta: Mapping[str, Any], task=None):
    """The Task object that builds the encoders of a run's task models: ``task`` when given, else the
    installed task ``run.json`` names (None when it names none: the PITI task encoder)."""
    if task is not None:
        return task
    name = meta.get("task")
    if not isinstance(name, str) or not name:
        return None
    from piti_core.plugins import get_plugin_manager

    return get_plugin_manager().tasks.get(name)


def load_run(run_dir, names: Optional[Iterable[str]] = None, device="cpu",
             extra_sections: Optional[Mapping[str, type]] = None, task=None) -> Run:
    """Read the config and the models ``names`` (default: all listed) of ``run_dir``.

    ``extra_sections`` (task name → config class) defaults to the installed task plugins' sections.
    ``task`` (a Task) builds the encoders (default: the installed task the run names), from the run's
    config, as :func:`piti_core.models.build.build_model` does in training.

    Models are built on the meta device and take the stored tensors directly; they come back in eval mode.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from piti_core.models.build import build_model, check_encoder, load_weights
    from piti_core.models.encoder import TaskEncoder

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
        model_task = _model_task(meta, task) if name in ("base", "upsampler") else None
        with torch.device("meta"):
            model = build_model(name, config, meta.get("cond_channels"), task=model_task)
        models[name] = load_weights(model, state, where=str(path), assign=True).eval()
        if model_task is not None and not isinstance(model.encoder, TaskEncoder):  # a task's own encoder
            unet_cfg = config.upsampler if name == "upsampler" else config.model
            check_encoder(model.encoder, model_task, config, unet_cfg, meta.get("cond_channels"))
    return Run(path=run_dir, config=config, meta=meta, models=models)
