"""`piti train --prior none`: the decoders start from random (seeded) weights, the from-scratch baseline."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from piti_core.errors import UsageError
from piti_core.train.finetune import finetune_stages, prior_decoders, train

from .conftest import TINY, tiny_config

# one stage-2 step at a learning rate that cannot move the weights: the result is the initialisation
STEPS = ["train.stage1_steps=0", "train.stage1_cont_steps=0", "train.stage2_steps=1", "train.upsampler_steps=0",
         "train.decoder_lr=1e-12"]


def _decoder(run):
    return {k[len("decoder."):]: v for k, v in load_file(str(run / "base.safetensors")).items()
            if k.startswith("decoder.")}


def _train(cfg, host, run, prior, scratch):
    return train(cfg, task=host.task("sketch"), run_dir=run, stages=finetune_stages(cfg), prior_dir=prior,
                 resume=False, overwrite=False, previews=False, scratch=scratch)


def test_scratch_starts_from_random_decoder_not_the_prior(data_dir, prior_dir, tmp_path, one_thread):
    cfg, host = tiny_config(data_dir, *STEPS)
    prior = prior_decoders(prior_dir, cfg)["base"]
    _train(cfg, host, tmp_path / "prior", prior_dir, scratch=False)
    _train(cfg, host, tmp_path / "a", None, scratch=True)
    _train(cfg, host, tmp_path / "b", None, scratch=True)
    finetuned, a, b = _decoder(tmp_path / "prior"), _decoder(tmp_path / "a"), _decoder(tmp_path / "b")
    assert finetuned.keys() == a.keys() == prior.keys()
    for k in prior:
        torch.testing.assert_close(finetuned[k], prior[k], atol=1e-6, rtol=0)  # the prior's weights ...
        assert torch.equal(a[k], b[k]), k  # ... vs a seeded random start: the same on every run
    # constant-initialised tensors (norms, zeroed output layers) are equal either way; random ones must differ
    drawn = [k for k in prior if prior[k].numel() > 1 and prior[k].std() > 0]
    assert drawn and all(not torch.allclose(a[k], prior[k]) for k in drawn)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["prior"] == "none"


def test_scratch_with_a_prior_is_refused(data_dir, prior_dir, tmp_path):
    cfg, host = tiny_config(data_dir, *STEPS)
    with pytest.raises(UsageError, match="from scratch takes no prior"):
        _train(cfg, host, tmp_path / "run", prior_dir, scratch=True)
    assert not (tmp_path / "run").exists()


def test_cli_prior_none(data_dir, tmp_path, one_thread):
    from piti_cli.main import cli

    run = tmp_path / "run"
    args = [a for kv in (*TINY, *STEPS) for a in ("--set", kv)]
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--preset", "tiny", "--data", str(data_dir),
                                   "--prior", "none", "--no-preview", "--out", str(run), *args])
    assert res.exit_code == 0, res.output
    assert "prior: none" in res.stderr
    meta = json.loads((run / "run.json").read_text())
    assert meta["prior"] == "none" and set(meta["models"]) == {"base"}
    assert json.loads((run / "prior.json").read_text()) == {"prior": "none", "source": "train"}
    # --resume reuses the recorded choice: a run from scratch cannot silently pick up the shipped prior
    from piti_cli.training import resumed_prior

    assert resumed_prior(None, {"resume": True, "out": str(run)}) == "none"
    assert resumed_prior("none", {"resume": True, "out": str(run)}) == "none"
    assert resumed_prior(None, {"resume": False, "out": str(run)}) is None  # a new run: the default prior
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--preset", "tiny", "--data", str(data_dir),
                                   "--prior", str(tmp_path), "--resume", "--out", str(run), *args])
    assert res.exit_code == 2 and "was started with --prior none" in res.output and "Traceback" not in res.output


def test_prior_record_of_a_run_with_the_shipped_prior(data_dir, prior_dir, tmp_path, one_thread):
    from piti_cli.training import resumed_prior
    from piti_core.train.finetune import saved_prior_choice

    cfg, host = tiny_config(data_dir, *STEPS)
    _train(cfg, host, tmp_path / "run", prior_dir, scratch=False)
    assert saved_prior_choice(tmp_path / "run") == (True, str(prior_dir))
    assert resumed_prior(None, {"resume": True, "out": str(tmp_path / "run")}) == str(prior_dir)
    assert saved_prior_choice(tmp_path / "elsewhere") == (False, None)  # runs written before prior.json
    (tmp_path / "run" / "prior.json").write_text("{")
    with pytest.raises(Exception, match="not a valid prior record"):
        saved_prior_choice(tmp_path / "run")
