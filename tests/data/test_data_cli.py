"""`piti data check` / `piti data toyworld`, and the embedded default data set."""

from __future__ import annotations

import json

import attrs
import pytest
from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.config import DataConfig, resolve_config
from piti_core.data import default as default_mod
from piti_core.data.dataset import build_dataset
from piti_core.data.default import default_dataset_root, toyworld_dir

from .conftest import snapshot, write_folder

toyworld = pytest.importorskip("piti_core.data.toyworld")


def test_check_summary_and_json(tmp_path):
    root = write_folder(tmp_path / "ds", n=6)
    before = snapshot(root)
    result = CliRunner().invoke(cli, ["data", "check", str(root), "--val-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "data set    tiny (folder)" in out and "samples     6 (train " in out
    assert "conditions  labels, edges, depth, normals; captions 6" in out
    assert "image sizes 24x16 (6)" in out and "4 of 4 found" in out and "problems    0" in out
    report = json.loads(CliRunner().invoke(cli, ["data", "check", str(root), "--json"]).stdout)
    assert report["ok"] and report["samples"] == 6 and report["conditions"] == ["labels", "edges", "depth", "normals"]
    assert report["depth_range_m"][0] == pytest.approx(1.0) and report["sizes"] == [{"width": 24, "height": 16,
                                                                                      "count": 6}]
    assert snapshot(root) == before


def test_data_command_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, piti_cli.commands.data as d; "
            "assert d.command.name == 'data'; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_toyworld_command_then_check(tmp_path):
    out = tmp_path / "world"
    result = CliRunner().invoke(cli, ["data", "toyworld", "--out", str(out), "--n", "3", "--size", "16",
                                      "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and (out / "dataset.json").is_file()
    again = CliRunner().invoke(cli, ["data", "toyworld", "--out", str(out), "--n", "3", "--size", "16"])
    assert again.exit_code == 2 and "--overwrite" in again.output  # refuses to replace
    assert CliRunner().invoke(cli, ["data", "toyworld", "--out", str(out), "--n", "3", "--size", "16",
                                    "--overwrite"]).exit_code == 0
    result = CliRunner().invoke(cli, ["data", "check", str(out)])
    assert result.exit_code == 0 and "data set    toyworld (folder)" in result.stdout, result.output
    ds = build_dataset(DataConfig(root=str(out)), "all", fields=("labels", "depth", "normals", "edges"),
                       image_size=16)
    assert len(ds) == 3 and ds.meta.num_classes == len(ds.meta.classes) and ds[0]["caption"]


def test_default_dataset_is_generated_once(_piti_home):
    cfg = resolve_config("tiny", overrides=["data.toyworld_samples=3", "data.toyworld_seed=1"])
    size = max(cfg.model.image_size, cfg.upsampler.image_size, cfg.encoder.cond_size)
    events = []
    root = default_dataset_root(cfg, callback=events.append)
    assert root == toyworld_dir(size, 3, 1) == _piti_home / "toyworld" / f"v1-{size}-3-1"
    assert (root / "dataset.json").is_file()
    assert "rendering the built-in toy world" in events[0]["message"]
    assert [e["done"] for e in events if e["event"] == "toyworld"][-1] == 3
    mtime = (root / "dataset.json").stat().st_mtime_ns
    events.clear()
    assert default_dataset_root(cfg, callback=events.append) == root
    assert "using the built-in toy world" in events[0]["message"] and len(events) == 1
    assert (root / "dataset.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no temp folder left
    # a command given no data set uses it
    ds = build_dataset(attrs.evolve(cfg.data, val_fraction=0.0), "train", fields=("labels",),
                       image_sizes=(cfg.model.image_size, cfg.upsampler.image_size), cond_size=cfg.encoder.cond_size)
    assert ds.root == root and ds[0]["image_hr"].shape[-1] == cfg.upsampler.image_size
    assert default_dataset_root(attrs.evolve(cfg, data=attrs.evolve(cfg.data, root="/x/y"))).as_posix() == "/x/y"


def test_default_dataset_is_atomic(_piti_home, monkeypatch):
    def broken(out_dir, n, size, seed, *, callback=None, overwrite=False):
        write_folder(out_dir, n=1)
        raise KeyboardInterrupt  # interrupted half-way

    monkeypatch.setattr(toyworld, "write_toyworld", broken)
    with pytest.raises(KeyboardInterrupt):
        default_mod.ensure_toyworld(32, 5, 0)
    assert not toyworld_dir(32, 5, 0).exists()
    assert list(toyworld_dir(32, 5, 0).parent.iterdir()) == []  # temp folder removed too


def test_default_data_needs_a_writable_piti_home_only_to_render(_piti_home, tmp_path, monkeypatch):
    from piti_core.data import cache
    from piti_core.errors import DataError

    cfg = resolve_config("tiny", overrides=["data.toyworld_samples=2", "data.toyworld_seed=4"])
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("PITI_HOME", str(tmp_path / "afile"))
    with pytest.raises(DataError, match=r"PITI_HOME=.*afile is not a folder piti can write"):
        default_mod.check_default_data(cfg)
    with pytest.raises(DataError, match=r"PITI_HOME=.*afile is not a folder piti can write"):
        default_dataset_root(cfg)
    monkeypatch.setenv("PITI_HOME", str(_piti_home))
    root = default_dataset_root(cfg)
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)  # now read-only: the cached world still serves
    default_mod.check_default_data(cfg)
    assert default_dataset_root(cfg) == root
    default_mod.check_default_data(attrs.evolve(cfg, data=attrs.evolve(cfg.data, root="/x/y")))  # given data: no check
