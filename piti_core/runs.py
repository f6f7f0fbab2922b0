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

    Overwrite protection is the caller's job (:func:`piti_core.io.check_writable`).
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
    """The validated ``run.json`` of ``run_dir``."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
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
    return meta


def load_run(run_dir, names: Optional[Iterable[str]] = None, device="cpu",
             extra_sections: Optional[Mapping[str, type]] = None) -> Run:
    """Read the config and the models ``names`` (default: all listed) of ``run_dir``.

    ``extra_sections`` (task name → config class) defaults to the installed task plugins' sections.

    Models are built on the meta device and take the stored tensors directly; they come back in eval mode.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from piti_core.config import load_config
    from piti_core.models.build import build_model, load_weights

    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    if extra_sections is None:  # task sections ([mask], [sketch] ...) of the installed task plugins
        from piti_core.plugins import get_plugin_manager

        extra_sections = get_plugin_manager().task_sections()
    config = load_config(run_dir / CONFIG_JSON, extra_sections)
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
