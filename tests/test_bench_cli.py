"""``piti bench`` on a very small model, and the FLOP counting it relies on."""

import json

import torch
from click.testing import CliRunner

from piti_cli.main import cli
from piti_core.bench import count_flops, cpu_info

SMALL = ["--set", "model.image_size=16", "--set", "model.attention_resolutions=[8]",
         "--set", "encoder.cond_size=32", "--set", "upsampler.image_size=32", "--set", "upsampler.super_res=16",
         "--set", "upsampler.attention_resolutions=[8]"]


def test_bench_json():
    result = CliRunner().invoke(cli, ["bench", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup", "0",
                                      "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["preset"] == "tiny" and data["device"] == "cpu" and data["dtype"] == "fp32"
    assert data["matmul_flops_per_s"] > 1e8 and data["matmul_size"] in (512, 1024, 2048)
    assert set(data["models"]) == {"base", "upsampler"}
    for entry in data["models"].values():
        assert entry["params"] > 0
        for phase, rate in (("train", "images_per_s"), ("sample", "evals_per_s")):
            r = entry[phase]
            assert r[rate] > 0 and r["flops_per_image"] > 0 and 0 < r["fraction_of_matmul"] < 5
            assert r["peak_memory_bytes"] > 0
        # a training step costs about three forward passes
        assert 2 < entry["train"]["flops_per_image"] / entry["sample"]["flops_per_image"] < 4.5
    assert "avx512_bf16" in data["cpu"]


def test_bench_text_output_and_bad_device():
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup", "0",
                                 "--model", "base"])
    assert result.exit_code == 0, result.output
    assert "base (" in result.stdout and "img/s" in result.stdout and "upsampler" not in result.stdout
    assert "matmul" in result.stdout
    if not torch.cuda.is_available():
        bad = runner.invoke(cli, ["bench", "--preset", "tiny", "--device", "cuda"])
        assert bad.exit_code == 2 and "no CUDA device" in bad.output


def test_attention_flops_are_counted():
    q = torch.randn(1, 2, 64, 32, requires_grad=True)

    def step():
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    forward = 2 * (2 * 64 * 64 * 32)  # QK^T and AV for 2 heads
    assert count_flops(step) >= 3 * forward
    assert isinstance(cpu_info()["amx_bf16"], bool)


def test_bench_dtype_auto_and_fp16_on_cpu():
    from piti_core.precision import cpu_has_native_bf16

    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "--preset", "tiny", *SMALL, "--steps", "1", "--warmup", "0",
                                 "--model", "base", "--dtype", "auto", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dtype_requested"] == "auto"
    assert data["dtype"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    bad = runner.invoke(cli, ["bench", "--preset", "tiny", "--dtype", "fp16"])
    assert bad.exit_code == 2 and "fp16 autocast is for CUDA" in bad.output and "Traceback" not in bad.output
