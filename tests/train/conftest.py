"""Fixtures for training tests: a small paired folder and a random prior run (tiny preset)."""

import json

import numpy as np
import pytest

TINY = [
    "encoder.width=32", "encoder.heads=2", "encoder.layers=1",
    "encoder.cnn_channels=8,8,16,16", "text.layers=1", "text.heads=2", "text.context_length=16",
    "train.batch_size=4", "train.log_every=1", "train.sample_every=1000", "train.save_every=2",
    "train.timestep_sampler=uniform",
]


def write_folder(root, n=24, size=64, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "edges").mkdir()
    lines = []
    for i in range(n):
        img = (rng.random((size, size, 3)) * 80).astype(np.uint8)
        a, b = sorted(rng.integers(4, size - 4, 2))
        img[a:b, a:b] = rng.integers(100, 255, 3)
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        edges = np.zeros((size, size), np.uint8)
        edges[a, a:b] = edges[b - 1, a:b] = edges[a:b, a] = edges[a:b, b - 1] = 255
        Image.fromarray(edges).save(root / "edges" / f"{i:03d}.png")
        lines.append(json.dumps({"stem": f"{i:03d}", "caption": "a box"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def one_thread():
    from tests.helpers import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("data") / "pairs")


def tiny_config(data_dir, *extra):
    from piti_core.config import resolve_config
    from piti_core.plugins import PluginHost

    host = PluginHost()
    host.load_entry_points()
    return resolve_config(preset="tiny", overrides=[*TINY, f"data.root={data_dir}", "data.flip=false", *extra],
                          extra_sections=host.task_sections()), host


@pytest.fixture(scope="session")
def prior_dir(tmp_path_factory, data_dir):
    import torch

    from piti_core.models.build import build_text_prior
    from piti_core.runs import save_run

    cfg, _ = tiny_config(data_dir)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("prior") / "prior"
    save_run(out, cfg, {"text_base": build_text_prior(cfg, "base"), "text_upsampler": build_text_prior(cfg, "upsampler")},
             task="", cond_channels=None, source="test")
    return out
