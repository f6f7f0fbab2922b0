"""Task-defined data fields and the public contract module (``piti_core.contract``).

A task brings a field piti does not know (a 16-channel feature map stored as ``features/<stem>.npy``),
trains on it through the CLI, and ``piti data check --task`` names a bad file of that field in one
line; field resizing never clamps; the built-in plugins import only the contract.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.hostile.harness import assert_clean_failure, invoke, snapshot

REPO = Path(__file__).resolve().parents[2]
FEAT_SOURCE = '''
import numpy as np
from piti_core.contract import ConditionSpec, Field, Task, hookimpl

SEEN = []


def read_features(path):
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 3 or arr.shape[0] != 16:
        raise ValueError(f"expected a (16, H, W) array, got shape {arr.shape}")
    return arr.astype(np.float32)


FEATURES = Field("feat16", folder="features", suffixes=(".npy",), read=read_features, channels=16,
                 resample="bilinear", description="a 16-channel feature map")


class FeatTask(Task):
    name = "feat16"
    description = "16-channel feature map -> image"
    fields = (FEATURES,)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=16, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        x = sample["feat16"]
        SEEN.append(tuple(x.shape))
        return (x / 10.0).clamp(-1, 1)

    def preprocess(self, source, cfg):
        import torch
        from piti_core.contract import fit_field

        x = torch.from_numpy(read_features(source))
        return self.encode({"feat16": fit_field(FEATURES, x, cfg)}, cfg).unsqueeze(0)


@hookimpl
def register_tasks(register):
    register(FeatTask())
'''


def _feat_dataset(root: Path, n: int = 6, size: int = 40) -> Path:
    """Images with a 16-channel ``features/<stem>.npy`` each; values up to 8 (far outside [0, 1])."""
    (root / "images").mkdir(parents=True)
    (root / "features").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        np.save(root / "features" / f"s{i}.npy", (rng.random((16, size, size)) * 16 - 8).astype(np.float32))
    return root


@pytest.fixture
def feat_plugin(fake_entry_points):
    from piti_core.testing import make_plugin_module

    module = make_plugin_module("piti_test_feat16", FEAT_SOURCE)
    fake_entry_points.keep_installed = True
    fake_entry_points.add("feat16", "piti_test_feat16", dist="piti-task-feat16", version="1.0.0")
    yield module
    sys.modules.pop("piti_test_feat16", None)


# ------------------------------------------------------------------------------------ resizing


def test_field_resize_never_clamps_continuous_values():
    from piti_core.data.transforms import resize_field

    depth = torch.linspace(0.5, 20.0, 32 * 32).reshape(1, 32, 32)
    for mode in ("bicubic", "bilinear", "area", "nearest"):
        out = resize_field("depth", depth, 8, mode)
        assert float(out.max()) > 15.0, f"{mode}: values clamped to {float(out.max())}"
    feats = torch.full((16, 32, 32), -5.0)
    assert float(resize_field("feat16", feats, 8, "bicubic").min()) < -4.0


def test_image_clamp_is_an_explicit_field_property():
    from piti_core.contract import Field, IMAGE
    from piti_core.data.transforms import resize_field

    assert IMAGE.clamp == (0.0, 1.0) and Field("x", read=lambda p: None).clamp is None
    sharp = torch.zeros(3, 32, 32)
    sharp[:, :, 16:] = 1.0  # a hard edge: bicubic overshoots
    out = resize_field("image", sharp, 12)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    clamped = resize_field("feat16", torch.full((1, 16, 16), 7.0), 8, "bilinear", clamp=(0.0, 1.0))
    assert float(clamped.max()) == 1.0


# ---------------------------------------------------------------------------- a task's own field


def test_names_of_builtin_fields_resolve_to_builtin_field_objects():
    from piti_core.contract import EDGES, Field, Task

    class OldStyle(Task):
        name = "oldstyle"
        sources = ("edges",)

    fields = OldStyle().data_fields()
    assert fields == (EDGES,) and isinstance(fields[0], Field)


def test_new_field_is_read_at_the_condition_size(tmp_path, feat_plugin):
    from piti_core.config import resolve_config
    from piti_core.plugins import get_plugin_manager

    root = _feat_dataset(tmp_path / "ds")
    host = get_plugin_manager()
    task = host.task("feat16")
    cfg = resolve_config(preset="tiny", overrides=[f"data.root={root}", "data.val_fraction=0"],
                         extra_sections=host.task_sections())
    ds = task.build_dataset(cfg, "train", image_sizes=(cfg.model.image_size,))
    s = cfg.encoder.cond_size
    sample = ds[0]
    assert tuple(sample["cond"].shape) == (16, s, s)
    assert feat_plugin.SEEN[-1] == (16, s, s)
    assert float(sample["feat16"].abs().max()) > 2.0  # resampled without clamping to [0, 1]


@pytest.mark.slow
def test_task_with_a_new_field_trains_through_the_cli(tmp_path, feat_plugin, piti_home):
    from tests.helpers import one_torch_thread

    root = _feat_dataset(tmp_path / "ds")
    steps = ["train.stage1_steps=2", "train.stage1_cont_steps=0", "train.stage2_steps=0", "train.upsampler_steps=0",
             "train.batch_size=2", "train.perceptual=none", "encoder.layers=1", "encoder.cnn_channels=8,8,16,16",
             f"data.root={root}",
             "data.val_fraction=0.3"]
    args = [a for s in steps for a in ("--set", s)]
    with one_torch_thread():
        res = invoke("train", "--task", "feat16", "--preset", "tiny", "--out", tmp_path / "run", "--device", "cpu",
                     "--no-preview", *args)
    assert res.exit_code == 0, res.output + res.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["cond_channels"] == 16


def test_data_check_through_the_task_names_a_bad_field_file(tmp_path, feat_plugin):
    root = _feat_dataset(tmp_path / "ds")
    np.save(root / "features" / "s3.npy", np.zeros((3, 40, 40), np.float32))  # 3 channels, not 16
    before = snapshot(root)
    res = invoke("data", "check", root, "--task", "feat16")
    assert_clean_failure(res, 1, mentions=["problem"], watched=before, watched_paths=[root])
    bad = [line for line in res.stdout.splitlines() if "s3.npy" in line]
    assert len(bad) == 1 and "feat16" in bad[0] and "16" in bad[0], res.stdout
    ok = invoke("data", "check", _feat_dataset(tmp_path / "good"), "--task", "feat16")
    assert ok.exit_code == 0 and "feat16" in ok.stdout, ok.stdout + ok.stderr


def test_data_check_through_the_task_reports_a_missing_field_folder(tmp_path, feat_plugin):
    root = _feat_dataset(tmp_path / "ds")
    for p in (root / "features").iterdir():
        p.unlink()
    (root / "features").rmdir()
    res = invoke("data", "check", root, "--task", "feat16")
    assert res.exit_code == 1
    assert "features" in res.stdout and "feat16" in res.stdout, res.stdout


def test_data_check_with_an_unknown_task_is_one_usage_line(tmp_path):
    root = _feat_dataset(tmp_path / "ds")
    res = invoke("data", "check", root, "--task", "no-such-task")
    assert_clean_failure(res, 2, mentions=["no-such-task"])


# ------------------------------------------------------------------------------------ contract


def test_contract_exports_what_a_plugin_needs():
    from piti_core import contract

    for name in ("Task", "ConditionSpec", "Field", "hookimpl", "DataError", "load_rgb", "fit_condition", "fit_field",
                 "is_pil", "as_path", "read_image", "read_labels", "read_depth", "read_normals", "crop_box",
                 "resize_field", "JointAugment", "LABELS", "EDGES", "DEPTH", "NORMALS", "IMAGE",
                 "assert_task_contract", "CONTRACT_VERSION", "require_contract"):
        assert getattr(contract, name) is not None, name
    assert set(contract.__all__) >= {"Task", "Field", "CONTRACT_VERSION"}
    for name in contract.__all__:  # every advertised name resolves
        assert hasattr(contract, name), name


def test_require_contract():
    from piti_core.contract import CONTRACT_VERSION, require_contract
    from piti_core.errors import PluginError

    major = int(CONTRACT_VERSION.split(".")[0])
    require_contract(f">={major}.0")
    require_contract(f"<{major + 1}")
    with pytest.raises(PluginError, match="contract"):
        require_contract(f">={major + 1}.0")
    with pytest.raises(ValueError):
        require_contract("about two")


def test_importing_the_contract_stays_light():
    code = ("import sys, piti_core.contract as c; c.Task; c.Field; c.hookimpl; "
            "print(','.join(m for m in ('torch', 'pytest', 'kornia') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"importing piti_core.contract imported {out.stdout.strip()}"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("package", ["mask", "sketch", "geometry"])
def test_builtin_plugins_import_only_the_contract(package):
    for path in sorted((REPO / "plugins" / package).glob("*.py")):
        for name in _imports(path):
            if name.startswith("piti_core"):
                assert name == "piti_core.contract", f"{path.name} imports {name}"
            if name.startswith("piti_plugins"):
                assert name.startswith(f"piti_plugins.{package}"), f"{path.name} imports {name}"


def test_builtin_tasks_declare_their_fields():
    from piti_core.contract import DEPTH, EDGES, LABELS, NORMALS
    from piti_core.plugins import PluginHost

    host = PluginHost()
    host.load_entry_points()
    assert host.task("mask").data_fields() == (LABELS,)
    assert host.task("sketch").data_fields() == (EDGES,)
    assert host.task("depth-normal").data_fields() == (DEPTH, NORMALS)


def test_a_task_listing_image_encodes_the_photo_at_the_condition_size(tmp_path):
    from piti_core.config import resolve_config
    from piti_core.contract import ConditionSpec, Task

    seen = []

    class Grey(Task):
        name = "grey"
        sources = ("image",)

        def condition_spec(self, cfg):
            return ConditionSpec(channels=1)

        def encode(self, sample, cfg):
            seen.append(tuple(sample["image"].shape))
            return sample["image"].mean(0, keepdim=True)

    root = _feat_dataset(tmp_path / "ds", n=2)
    cfg = resolve_config(preset="tiny", overrides=[f"data.root={root}", "data.val_fraction=0"])
    assert cfg.model.image_size != cfg.encoder.cond_size
    sample = Grey().build_dataset(cfg, "train", train=False)[0]
    s = cfg.encoder.cond_size
    assert seen == [(3, s, s)] and tuple(sample["cond"].shape) == (1, s, s)
    assert tuple(sample["image"].shape) == (3, cfg.model.image_size, cfg.model.image_size)  # the target
    assert "cond_image" not in sample


def test_a_cached_field_is_read_once_and_reused(tmp_path, piti_home):
    import attrs

    from piti_core.config import DataConfig
    from piti_core.contract import Field
    from piti_core.data.dataset import build_dataset

    calls = []

    def read(path):
        calls.append(path.name)
        return np.load(path, allow_pickle=False)

    field = Field("feat16", folder="features", suffixes=(".npy",), read=read, channels=16, cache="1")
    root = _feat_dataset(tmp_path / "ds", n=3)
    cfg = DataConfig(root=str(root), val_fraction=0.0)
    first = build_dataset(cfg, "train", fields=(field,), image_size=8, cond_size=8, validate="none")
    assert len(calls) == 3 and tuple(first[0]["feat16"].shape) == (16, 8, 8)
    again = build_dataset(attrs.evolve(cfg), "train", fields=(field,), image_size=8, cond_size=8, validate="none")
    again[0], again[1]
    assert len(calls) == 3, "the cached field was decoded again"
    expected = np.load(root / "features" / "s0.npy")
    got = readers_of(again, 0)
    assert np.allclose(got, expected)


def readers_of(ds, i):
    return ds.load(i)["feat16"]


def test_field_contract_check(tmp_path):
    from piti_core.contract import EDGES, LABELS, NORMALS, Field, assert_field_contract

    root = _feat_dataset(tmp_path / "ds", n=2)
    bad = root / "features" / "bad.npy"
    np.save(bad, np.zeros((2, 4, 4), np.float32))

    def read(path):
        return np.load(path, allow_pickle=False)

    feat = Field("feat16", folder="features", suffixes=(".npy",), read=read, channels=16, resample="bicubic")
    assert_field_contract(feat, root / "features" / "s0.npy", bad)
    for f in (EDGES, LABELS, NORMALS):
        assert_field_contract(f)


# --------------------------------------------------------------------- hostile field files (corpus)


def _nan(root):
    arr = np.load(root / "features" / "s2.npy")
    arr[0, 0, 0] = np.nan
    np.save(root / "features" / "s2.npy", arr)
    return "s2.npy", ["nan"]


def _truncated(root):
    path = root / "features" / "s2.npy"
    path.write_bytes(path.read_bytes()[:200])
    return "s2.npy", ["s2.npy"]


def _wrong_size(root):
    np.save(root / "features" / "s2.npy", np.zeros((16, 20, 40), np.float32))
    return "s2.npy", ["40x20", "same size"]


def _pickled(root):
    np.save(root / "features" / "s2.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return "s2.npy", ["s2.npy"]


def _jpeg_in_a_lossless_folder(root):
    Image.new("RGB", (40, 40)).save(root / "features" / "s2.jpg")
    return "s2.jpg", ["losslessly"]


HOSTILE = {"nan": _nan, "truncated": _truncated, "wrong-size": _wrong_size, "pickled": _pickled,
           "jpeg": _jpeg_in_a_lossless_folder}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_field_file_is_one_line_naming_it(tmp_path, feat_plugin, case):
    root = _feat_dataset(tmp_path / "ds")
    name, words = HOSTILE[case](root)
    before = snapshot(root)
    res = invoke("data", "check", root, "--task", "feat16")
    assert_clean_failure(res, 1, watched=before, watched_paths=[root])
    lines = [line for line in res.stdout.splitlines() if name in line]
    assert len(lines) == 1, res.stdout
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    train = invoke("train", "--task", "feat16", "--preset", "tiny", "--out", tmp_path / "run", "--device", "cpu",
                   "--no-preview", "--set", f"data.root={root}", "--set", "data.val_fraction=0", "--set",
                   "train.stage1_steps=1", "--set", "train.batch_size=6", "--set", "encoder.layers=1")
    errors = [line for line in train.stderr.splitlines() if line.startswith("Error:")]
    assert train.exit_code == 1 and "Traceback" not in train.stderr, train.stderr
    assert len(errors) == 1 and name in errors[0], train.stderr  # the data error, after the status lines
    assert snapshot(root) == before


def test_a_task_declaring_an_unknown_field_name_is_blamed_in_one_line(tmp_path, fake_entry_points):
    from piti_core.testing import make_plugin_module

    make_plugin_module("piti_test_badfield", '''
from piti_core.contract import ConditionSpec, Task, hookimpl

class Keypoints(Task):
    name = "kp"
    description = "keypoints"
    fields = ("keypoints",)  # a name nobody declares

    def condition_spec(self, cfg):
        return ConditionSpec(channels=1)

@hookimpl
def register_tasks(register):
    register(Keypoints())
''')
    fake_entry_points.keep_installed = True
    fake_entry_points.add("kp", "piti_test_badfield")
    try:
        res = invoke("data", "check", _feat_dataset(tmp_path / "ds", n=2), "--task", "kp")
        assert_clean_failure(res, 1, mentions=["task 'kp'", "keypoints", "Field"])
    finally:
        sys.modules.pop("piti_test_badfield", None)


def test_a_plugin_probe_that_raises_is_one_data_error_naming_the_file(tmp_path):
    from piti_core.contract import Field
    from piti_core.errors import DataError

    def probe(path, meta):
        raise ValueError("bad header")

    field = Field("feat16", folder="features", suffixes=(".bin",), read=lambda p: None, channels=16, probe=probe)
    path = tmp_path / "x.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="x.bin.*bad header"):
        field.probe_size(path)


def test_field_contract_accepts_sparse_area_resampled_values():
    from piti_core.contract import Field
    from piti_core.testing import assert_field_contract

    def synthetic(size, generator, spec=None):
        out = torch.zeros(1, size, size)
        out[0, 3, 5] = 1.0  # one hint point: area averaging keeps it below 1
        return {"dots": out}

    field = Field("dots", folder="dots", suffixes=(".npy",), read=lambda p: None, channels=1, resample="area",
                  synthetic=synthetic)
    assert_field_contract(field)
