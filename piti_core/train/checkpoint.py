"""Trainer checkpoints without pickle: tensors in safetensors, everything else in JSON.

Layout inside a run directory::

    checkpoints/
      step-000200/            one complete checkpoint (written into a temp dir, then renamed)
        tensors.safetensors   model weights, EMA shadows, optimizer moments, aux states, RNG states
        trainer.json          step, stage, optimizer param groups, scaler, counters, data position
      latest.json             {"checkpoint": "step-000200"} — replaced atomically after the rename

A crash mid-save leaves a stray temp dir and the previous ``latest.json`` intact; files and folders
are flushed to disk (fsync) before each rename, so a power loss does not leave empty files behind
either. Only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from piti_core.errors import CheckpointError
from piti_core.io import atomic_write_text, fsync_dir, fsync_file

LATEST = "latest.json"


# ------------------------------------------------------------------------------ optimizer state
def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> (tensors keyed ``prefix.state.<param>.<name>``, JSON-able param groups)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{idx}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str) -> None:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for key, value in tensors.items():
        if key.startswith(head):
            idx, name = key[len(head):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ------------------------------------------------------------------------------ RNG state
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    import random

    import numpy as np

    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _jsonable(obj):
    if isinstance(obj, tuple):
        return [_jsonable(o) for o in obj]
    return obj


# ------------------------------------------------------------------------------ save / load
def save_checkpoint(root: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 3) -> Path:
    """Write ``root/name`` atomically, point ``latest.json`` at it, prune to the last ``keep``.

    The files and the folder are flushed to disk before the folder is renamed into place, and ``root``
    after it, so a power loss never leaves ``latest.json`` pointing at empty files. A checkpoint of the
    same name is moved aside (``.name.old``) until the new one is in place: there is always one good copy.
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    final, aside = root / name, root / f".{name}.old"
    moved = False
    try:
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(cpu, str(tmp / "tensors.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for f in ("tensors.safetensors", "trainer.json"):
            fsync_file(tmp / f)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
            moved = True
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not final.exists():
            aside.rename(final)  # the previous copy back where latest.json may point
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
    atomic_write_text(root / LATEST, json.dumps({"checkpoint": name}) + "\n")
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stray in root.glob(".step-*"):  # temp dirs of interrupted saves
        shutil.rmtree(stray, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    path = Path(root) / LATEST
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["checkpoint"]
    except (ValueError, OSError, KeyError, TypeError) as exc:  # ValueError: bad JSON or not UTF-8
        raise CheckpointError(f"{path} is corrupt ({exc}); delete it to resume from the newest step-* folder") from None
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(f"{path} is corrupt (checkpoint name {name!r}); delete it to resume from the newest "
                              "step-* folder")
    ckpt = Path(root) / name
    if not (ckpt / "trainer.json").is_file():
        aside = Path(root) / f".{name}.old"  # a save of the same name stopped between its two renames
        if (aside / "trainer.json").is_file():
            return aside
        raise CheckpointError(f"{path} points at {ckpt}, which is incomplete")
    return ckpt


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(Path(path) / "tensors.safetensors"))
        meta = json.loads((Path(path) / "trainer.json").read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None
    return tensors, meta
