"""`--compile`: compiled and eager models agree, state-dict keys stay, sampling compiles once, clear errors.

torch's inductor backend compiles C++ kernels with g++, which takes minutes on a cold cache on a
shared 2-core machine, so these tests run the same torch.compile path (dynamo capture, guards,
AOTAutograd with inductor's decompositions and min-cut partitioner) with a backend that skips only
the C++ code generation: ``aot_eager_decomp_partition``. ``PITI_TEST_INDUCTOR=1`` adds the
inductor run of the same comparison (docs/compile.md).
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from piti_cli.main import cli
from piti_core.compile import compile_model, is_compiled, uncompile
from piti_core.errors import CompileError
from tests.helpers import SMALL_ENCODER, one_torch_thread, random_run

# the smallest decoder the UNet builds: one level, one res block, attention at 16x16
MINI = [*SMALL_ENCODER, "model.model_channels=16", "model.channel_mult=1,", "model.attention_resolutions=16,",
        "model.num_head_channels=16", "model.image_size=16"]
TRACED = "aot_eager_decomp_partition"
# fp32 with the same kernels; decompositions change the order of reductions (group norm, softmax):
# a few ulp per layer. Measured: 6e-7 on outputs of magnitude ~1.6, 1.5e-8 on gradients of ~0.06.
RTOL = 1e-4


def _config(*extra):
    from piti_core.config import resolve_config

    return resolve_config(preset="tiny", overrides=[*MINI, *extra])


def _model(cfg, seed: int = 0):
    """A base model with every weight perturbed (zero-initialised output layers would hide differences)."""
    from piti_core.models.build import build_base

    torch.manual_seed(seed)
    model = build_base(cfg, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _close(a, b):
    scale = b.abs().max().item()
    return (a - b).abs().max().item() <= RTOL * scale, f"max diff {(a - b).abs().max().item():.3g} at scale {scale:.3g}"


class Tiny(torch.nn.Module):
    """A module defined outside torch (dynamo does not trace torch.nn's own forward methods)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, x):
        return torch.tanh(self.layer(x))


class Counter:
    """A torch.compile backend that counts compilations, then hands the graph to ``backend`` (None: run it as is)."""

    def __init__(self, backend=None):
        self.graphs, self.backend = 0, backend

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.backend is None:
            return gm.forward
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.backend)(gm, example_inputs)


def test_sampling_matches_eager_compiles_once_and_keys_stay(tmp_path):
    from piti_core.runs import load_run, save_run
    from piti_core.sampling import sample_base

    cfg = _config()
    eager, comp = _model(cfg).eval(), _model(cfg).eval()
    counter = Counter(TRACED)
    compile_model(comp, device="cpu", purpose="sample", backend=counter)
    assert is_compiled(comp.decoder) and not is_compiled(comp.encoder)  # the encoder runs once per image
    cond = torch.rand(2, 1, 64, 64)
    with one_torch_thread():
        out = [sample_base(model, cond, torch.ones_like(cond), cfg, sampler="ddim", steps="5", scale=3.0,
                           generator=torch.Generator().manual_seed(0)) for model in (comp, eager)]
    ok, msg = _close(*out)
    assert ok, msg
    assert counter.graphs == 1  # guidance doubles the batch once; timesteps change in value only
    assert list(comp.state_dict()) == list(eager.state_dict())
    save_run(tmp_path / "run", cfg, {"base": comp}, task="sketch", cond_channels=1, source="test")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "base.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert keys == set(eager.state_dict()) and not any("_orig_mod" in k for k in keys)
    loaded = load_run(tmp_path / "run", names=["base"]).models["base"]
    assert torch.equal(loaded.decoder.out[2].weight, comp.decoder.out[2].weight)


# gradient checkpointing is checked without the decompositions (aot_eager), to keep the module short
@pytest.mark.parametrize("checkpointing, backend", [(False, TRACED), (True, "aot_eager")])
def test_training_step_matches_eager(checkpointing, backend):
    from piti_core.diffusion import build_schedule, training_losses

    cfg = _config(f"model.checkpointing={str(checkpointing).lower()}")
    eager, comp = _model(cfg).train(), _model(cfg).train()
    compile_model(comp, device="cpu", purpose="train", backend=backend)
    assert is_compiled(comp.decoder) and is_compiled(comp.encoder)
    assert comp.decoder.checkpointing == checkpointing
    schedule = build_schedule("cosine", 1000)
    gen = torch.Generator().manual_seed(0)
    x0, cond = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1, torch.rand(2, 1, 64, 64, generator=gen)
    t, noise = torch.tensor([5, 700]), torch.randn(2, 3, 16, 16, generator=gen)
    losses = []
    with one_torch_thread():
        for model in (comp, eager):
            loss = training_losses(lambda xt, tt: model(xt, tt, cond), x0, t, schedule, noise=noise)["loss"].mean()
            loss.backward()
            losses.append(loss.detach())
    ok, msg = _close(losses[0], losses[1])
    assert ok, f"loss: {msg}"
    grads_c = torch.cat([p.grad.flatten() for p in comp.parameters()])
    grads_e = torch.cat([p.grad.flatten() for p in eager.parameters()])
    assert grads_e.abs().max() > 0
    ok, msg = _close(grads_c, grads_e)
    assert ok, f"gradients: {msg}"


def test_sample_cli_compile_gives_the_same_images(tmp_path, monkeypatch):
    run_dir = random_run(tmp_path / "run", upsampler=False, overrides=MINI[len(SMALL_ENCODER):])[0]
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        arr = np.full((64, 64), 255, np.uint8)
        arr[20 + i * 9, 8:56] = 0
        Image.fromarray(arr).save(folder / f"s{i}.png")
    monkeypatch.setenv("PITI_COMPILE_BACKEND", "aot_eager")  # the flag's path; numerics are tested above
    images = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        with one_torch_thread():
            res = CliRunner().invoke(cli, ["sample", "--run", str(run_dir), "--input", str(folder), "--out",
                                           str(tmp_path / name), "--steps", "3", "--batch-size", "2",
                                           "--device", "cpu", "--dtype", "fp32", *extra])
        assert res.exit_code == 0, res.output
        images[name] = [np.asarray(Image.open(tmp_path / name / f"s{i}_base.png")).astype(int) for i in range(2)]
        settings = json.loads((tmp_path / name / "settings.json").read_text())["settings"]
        assert settings["compile"] == (name == "compiled")
    for a, b in zip(images["eager"], images["compiled"]):
        assert a.std() > 0 and np.abs(a - b).max() <= 1  # one 8-bit level: rounding of a ~1e-6 difference


def test_no_cpp_compiler_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("piti_core.compile.cpp_compiler", lambda: None)
    with pytest.raises(CompileError, match="C\\+\\+ compiler"):
        compile_model(torch.nn.Linear(2, 2), device="cpu")
    res = CliRunner().invoke(cli, ["train", "--task", "sketch", "--out", str(tmp_path / "run"), "--compile",
                                   "--device", "cpu", "--no-preview"])
    assert res.exit_code == 1 and "C++ compiler" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_backend_failure_is_one_line():
    def broken(gm, example_inputs):
        raise RuntimeError("no kernels today\nsecond line")

    layer = compile_model(Tiny(), device="cpu", backend=broken)
    with pytest.raises(CompileError, match="Tiny.*no kernels today; run without --compile") as info:
        layer(torch.ones(1, 2))
    assert "second line" not in str(info.value)


def test_copies_can_run_eagerly_and_compiling_twice_is_a_no_op():
    import copy

    counter = Counter()
    layer = compile_model(Tiny(), device="cpu", backend=counter)
    first = layer._compiled_call_impl
    compile_model(layer, device="cpu", backend=counter)
    assert layer._compiled_call_impl is first
    twin = uncompile(copy.deepcopy(layer))
    assert is_compiled(layer) and not is_compiled(twin)
    with torch.no_grad():
        twin.layer.weight.zero_(), twin.layer.bias.zero_()
    assert torch.equal(twin(torch.ones(1, 2)), torch.zeros(1, 2)) and counter.graphs == 0
    assert not torch.equal(layer(torch.ones(1, 2)), torch.zeros(1, 2)) and counter.graphs == 1


def test_modes_and_cuda_graph_outputs():
    from piti_core.compile import _Compiled, default_mode

    assert default_mode("cuda", "sample") == "reduce-overhead"
    assert default_mode("cuda", "train") == default_mode("cpu", "sample") == "default"
    buffer = torch.zeros(2)  # stands for a CUDA graph's static output, overwritten by the next replay
    out = _Compiled(lambda: buffer, "decoder", cuda_graphs=True)()
    buffer.add_(1)
    assert torch.equal(out, torch.zeros(2))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PITI_TEST_INDUCTOR") != "1",
                    reason="inductor's C++ compilation takes minutes on a cold cache; set PITI_TEST_INDUCTOR=1")
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for inductor")
def test_inductor_forward_matches_eager():
    cfg = _config()
    eager, comp = _model(cfg).eval(), _model(cfg).eval()
    counter = Counter("inductor")
    compile_model(comp, device="cpu", purpose="sample", backend=counter)
    x, cond = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 64, 64)
    with one_torch_thread(), torch.no_grad():
        enc = eager.encode(cond)
        for t in (10.0, 500.0, 900.0):
            tt = torch.full((2,), t)
            ok, msg = _close(comp.decode_encoded(x, tt, enc), eager.decode_encoded(x, tt, enc))
            assert ok, msg
    assert counter.graphs == 1


def test_recompile_options_on_a_torch_without_isolate_recompiles(monkeypatch):
    """torch 2.11 (a GPU machine's) has no isolate_recompiles: the shared limit is raised instead."""
    import torch._dynamo.config as dynamo_config

    from piti_core.compile import SHARED_RECOMPILE_LIMIT, recompile_options

    assert recompile_options(lambda model, backend="inductor", isolate_recompiles=False: None) == \
        {"isolate_recompiles": True}
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(dynamo_config, name, 8)
    assert recompile_options(lambda model, backend="inductor", mode=None: None) == {}
    assert getattr(dynamo_config, name) == SHARED_RECOMPILE_LIMIT
