"""Stop and resume gives bit-identical weights, mid-epoch and across a stage boundary."""

import pytest
import torch
from safetensors.torch import load_file

from piti_core.errors import CheckpointError, UsageError
from piti_core.train.finetune import finetune_stages, train
from piti_core.train.session import Interrupted

from .conftest import tiny_config


def _run(cfg, host, run_dir, prior, stop_after=None, resume=False):
    seen = {"n": 0}

    def callback(event):
        if event.get("event") == "step":
            seen["n"] += 1

    stop = (lambda: seen["n"] >= stop_after) if stop_after else (lambda: False)
    return train(cfg, task=host.task("sketch"), run_dir=run_dir, stages=finetune_stages(cfg), prior_dir=prior,
                 resume=resume, overwrite=False, callback=callback, should_stop=stop, previews=False)


@pytest.fixture(scope="module")
def setup(data_dir):
    return tiny_config(data_dir, "train.stage1_steps=3", "train.stage1_cont_steps=2", "train.stage2_steps=2",
                       "train.upsampler_steps=0")


@pytest.fixture(scope="module")
def reference(setup, prior_dir, tmp_path_factory):
    cfg, host = setup
    run = tmp_path_factory.mktemp("ref") / "run"
    _run(cfg, host, run, prior_dir)
    return load_file(str(run / "base.safetensors"))


@pytest.mark.parametrize("stops", [(2,), (4,), (2, 3, 6)])  # mid-epoch; across stage1 -> stage1-cont; several
def test_resume_is_bit_exact(setup, prior_dir, reference, tmp_path, stops):
    cfg, host = setup
    run = tmp_path / "run"
    done = 0
    for i, stop in enumerate(stops):
        with pytest.raises(Interrupted):
            _run(cfg, host, run, prior_dir, stop_after=stop - done, resume=i > 0)
        done = stop
    _run(cfg, host, run, prior_dir, resume=True)
    got = load_file(str(run / "base.safetensors"))
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), k
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 3 + 2 + 2  # each step logged once despite the restarts


def test_stage1_trains_encoder_only(setup, prior_dir, tmp_path):
    import attrs

    from piti_core.train.finetune import prior_decoders

    cfg, host = setup
    cfg = attrs.evolve(cfg, train=attrs.evolve(cfg.train, stage1_cont_steps=0, stage2_steps=0))
    run = tmp_path / "run"
    _run(cfg, host, run, prior_dir)
    state = load_file(str(run / "base.safetensors"))
    prior = prior_decoders(prior_dir, cfg)["base"]
    for k, v in prior.items():
        assert torch.equal(state["decoder." + k], v), k  # frozen decoder untouched
    tensors = load_file(str(sorted((run / "checkpoints").glob("step-*"))[-1] / "tensors.safetensors"))
    assert not any(k.startswith("ema.decoder.") for k in tensors)  # no EMA / optimizer state for it
    assert any(k.startswith("ema.encoder.") for k in tensors)


def test_refuses_existing_run_and_mismatching_prior(setup, prior_dir, tmp_path, data_dir):
    cfg, host = setup
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        _run(cfg, host, run, prior_dir)
    assert (run / "config.json").read_text() == "{}"
    other, _ = tiny_config(data_dir, "model.num_res_blocks=2")
    with pytest.raises(CheckpointError, match="does not match the 'tiny' preset: .*decoder\\."):
        _run(other, host, tmp_path / "run2", prior_dir)


def test_batch_larger_than_dataset(prior_dir, tmp_path, data_dir):
    from piti_core.errors import DataError

    cfg, host = tiny_config(data_dir, "train.batch_size=64", "train.stage1_steps=1")
    with pytest.raises(DataError, match="larger than the training set"):
        _run(cfg, host, tmp_path / "run", prior_dir)
