"""``piti bench``: training and sampling throughput of the models of a preset."""

from __future__ import annotations

import json

import click

from piti_cli.options import config_options


def _fmt_bytes(n) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


@click.command("bench")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="fp32, or bf16/fp16 autocast (norms and attention softmax stay fp32); auto: bf16 where the "
                   "hardware runs it natively, fp16 on older GPUs, else fp32 (the train/sample default).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Timed steps per phase.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed steps first.")
@click.option("--model", "which", type=click.Choice(["both", "base", "upsampler"]), default="both",
              show_default=True)
@click.option("--cond-channels", type=click.IntRange(min=1), default=3, show_default=True,
              help="Condition channels of the task encoder (3: RGB mask, 1: sketch, 6: depth+normal).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON on stdout.")
@click.option("--compare", is_flag=True,
              help="Time the variants side by side in one run: stage 2 vs stage 1 vs checkpointing vs bf16 vs "
                   "compiled training steps of the base model, sampling step costs, and the default sampling "
                   "recipe against the official one (ratios and fractions of the matmul rate).")
@click.option("--variants", default=None, metavar="LIST",
              help="With --compare: comma-separated training variants (stage2,stage1,checkpointing,bf16,compiled,"
                   "compiled-bf16; default: those that run natively here).")
@click.option("--no-sample", is_flag=True, help="With --compare: skip the sampling and recipe part.")
@click.option("--no-train", is_flag=True,
              help="With --compare: skip the training steps; --variants then picks the sampling variants only.")
@click.option("--json-file", type=click.Path(dir_okay=False), default=None,
              help="With --compare: write the result as JSON to this file, rewritten after every variant, so a "
                   "run that is stopped keeps what it measured.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --json-file.")
@config_options
def command(device, dtype, batch_size, steps, warmup, which, cond_channels, threads, as_json, compare, variants,
            no_sample, no_train, json_file, overwrite, config) -> None:
    """Measure images/s of a training step (forward+backward), model evaluations/s when sampling,
    peak memory, and the achieved FLOP rate relative to a 2048×2048 matmul on the same device
    (smaller where that would take more than 5 s, e.g. bf16 on a CPU without native bf16).

    Weights are random; the preset only sets the sizes. Example: piti bench --preset tiny --json
    """
    import torch

    from piti_cli.ui import status
    from piti_core.bench import run_bench

    if threads:
        torch.set_num_threads(threads)
    if compare:
        from piti_cli.bench_report import print_compare
        from piti_core.bench_compare import run_compare

        chosen = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
        write = None
        if json_file:
            from pathlib import Path

            from piti_core.io import OutputFolder, atomic_write_text

            target = Path(json_file)  # --overwrite replaces an earlier bench result only, never a user's file
            ours = [target.name] if _is_bench_result(target) else []
            OutputFolder(target.parent, owned=ours, overwrite=True, command="piti bench").claim([target.name])
            if target.exists() and not overwrite:
                raise click.UsageError(f"{target} already exists; pass --overwrite to replace it")

            def write(result):
                atomic_write_text(Path(json_file), json.dumps(result, indent=2) + "\n")
        result = run_compare(config, device=device, batch_size=batch_size, steps=steps, warmup=warmup,
                             cond_channels=cond_channels, variants=chosen, sample=not no_sample, train=not no_train,
                             callback=lambda info: status(f"bench: {info['phase']}"), partial=write)
        if write:
            write(result)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            print_compare(result)
        return
    if variants or no_sample or no_train or json_file:
        raise click.UsageError("--variants, --no-sample, --no-train and --json-file go with --compare")
    models = ("base", "upsampler") if which == "both" else (which,)

    def callback(info):
        status(f"bench: {info['model']} {info['phase']}")

    result = run_bench(config, models=models, device=device, dtype=dtype, batch_size=batch_size, steps=steps,
                       warmup=warmup, cond_channels=cond_channels, callback=callback)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['preset']} on {result['device_name']} ({result['device']}, {result['dtype']}, "
               f"{result['threads']} threads), batch {batch_size}, {steps} steps")
    n = result["matmul_size"]
    click.echo(f"{n}×{n} matmul: {result['matmul_flops_per_s'] / 1e9:,.1f} GFLOP/s")
    for name, r in result["models"].items():
        t, s = r["train"], r["sample"]
        click.echo(f"{name} ({r['params']:,} params, {r['image_size']}²):")
        click.echo(f"  train   {t['images_per_s']:8.3f} img/s   {t['flops_per_s'] / 1e9:8.1f} GFLOP/s "
                   f"({100 * t['fraction_of_matmul']:.0f}% of matmul)   peak {_fmt_bytes(t['peak_memory_bytes'])}")
        click.echo(f"  sample  {s['evals_per_s']:8.3f} eval/s  {s['flops_per_s'] / 1e9:8.1f} GFLOP/s "
                   f"({100 * s['fraction_of_matmul']:.0f}% of matmul)   peak {_fmt_bytes(s['peak_memory_bytes'])}")


def _is_bench_result(path) -> bool:
    """Whether ``path`` is a result file an earlier ``piti bench --compare --json-file`` wrote."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == "piti-bench-compare/1"
    except (OSError, ValueError, AttributeError):
        return False
