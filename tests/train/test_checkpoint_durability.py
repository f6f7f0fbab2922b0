"""Checkpoint saves are flushed to disk before they are renamed into place, and never remove the only
good copy of a checkpoint before the new one is in place."""

import os
from pathlib import Path

import pytest
import torch

from piti_core.train import checkpoint
from piti_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _record(monkeypatch):
    """Log of ("fsync", path) and ("rename", src, dst) in the order they happen."""
    events = []
    fsync, rename = os.fsync, os.rename

    def logged_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def logged_rename(src, dst, *a, **k):
        events.append(("rename", str(src), str(dst)))
        return rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "rename", logged_rename)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name file descriptors")
def test_files_and_folders_are_flushed_around_the_rename(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    events = _record(monkeypatch)
    save_checkpoint(root, "step-00-0000002", {"w": torch.ones(4)}, {"step": 2})
    into_place = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(root / "step-00-0000002"))
    tmp = events[into_place][1]
    flushed_before = {e[1] for e in events[:into_place] if e[0] == "fsync"}
    assert {f"{tmp}/tensors.safetensors", f"{tmp}/trainer.json", tmp} <= flushed_before
    assert ("fsync", str(root)) in events[into_place:]


def test_a_failed_save_keeps_the_checkpoint_of_the_same_name(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, "step-00-0000002", {"w": torch.ones(4)}, {"step": 2})
    rename = os.rename

    def fail_into_place(src, dst, *a, **k):
        if Path(src).name.startswith(".step-00-0000002.") and not Path(src).name.endswith(".old"):
            raise OSError(28, "No space left on device")
        return rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", fail_into_place)
    with pytest.raises(OSError):
        save_checkpoint(root, "step-00-0000002", {"w": torch.zeros(4)}, {"step": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(latest_checkpoint(root))
    assert torch.equal(tensors["w"], torch.ones(4)) and meta == {"step": 2}


def test_a_save_stopped_between_its_renames_resumes_from_the_copy_aside(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, "step-00-0000002", {"w": torch.ones(4)}, {"step": 2})
    (root / "step-00-0000002").rename(root / ".step-00-0000002.old")  # the state a power loss could leave
    tensors, _ = load_checkpoint(latest_checkpoint(root))
    assert torch.equal(tensors["w"], torch.ones(4))
    save_checkpoint(root, "step-00-0000004", {"w": torch.zeros(4)}, {"step": 4})
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00-0000004"]


@pytest.mark.parametrize("text", ['{"checkpoint": "../../elsewhere"}', '{"checkpoint": 3}', "\udcff"])
def test_a_corrupt_latest_json_is_a_checkpoint_error(tmp_path, text):
    from piti_core.errors import CheckpointError

    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / checkpoint.LATEST).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match="latest.json is corrupt"):
        latest_checkpoint(root)
