"""``piti train --dry-run``: the memory preflight rendered as a table (stderr) or JSON (stdout)."""

from __future__ import annotations

import json

import click

VERDICTS = {
    "fits": "fits",
    "tight": "above {headroom:.0%} of the available memory: it may not fit",
    "too-big": "does not fit",
    "unknown": "the device's free memory is unknown",
}


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e5 else f"{n:,}"


def show_preflight(cfg, *, task, stages, device: str, dtype: str | None, as_json: bool, previews: bool = True) -> None:
    """Estimate every stage the command would run; never builds a real model or touches a run directory."""
    from piti_cli.ui import err_console, warn
    from piti_core.train.preflight import HEADROOM, estimate

    channels = task.condition_spec(cfg).channels if task is not None else None
    with err_console.status("estimating memory (fake tensors, no allocation)"):
        result = estimate(cfg, stages, cond_channels=channels, device=device, dtype=dtype, previews=previews,
                          task=task)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    elif stages:
        _table(result)
    else:
        err_console.print("no stage to run (every stage has 0 steps): nothing to estimate", markup=False)
        return
    verdict = VERDICTS[result.verdict].format(headroom=HEADROOM)
    line = (f"estimated peak {fmt_bytes(result.peak)}; {result.device} has {fmt_bytes(result.available)} "
            f"available ({result.memory_kind}): {verdict}")
    if result.verdict == "fits":
        err_console.print(line, markup=False, soft_wrap=True)
    else:
        warn(line)
    for s in result.suggestions:
        flags = " ".join(s.flags)
        err_console.print(f"  try: {flags}   # {s.message}" if flags else f"  {s.message}", markup=False,
                          soft_wrap=True)


def _table(result) -> None:
    from rich import box
    from rich.table import Table

    from piti_cli.ui import err_console

    cpu = result.device.startswith("cpu")
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(result.dtype, result.dtype)
    unit, scale = ("GiB", 2**30) if result.peak >= 2**30 else ("MiB", 2**20)

    def size(n: int) -> str:
        return f"{n / scale:,.2f}" if unit == "GiB" else f"{n / scale:,.0f}"

    table = Table(title=f"memory preflight ({unit}): {result.device}, {dtype}, micro-batch {result.batch_size} × "
                        f"{result.grad_accum} accumulation", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("stage", "trained\nparams", "weights", "grads+\nAdamW+\nEMA", "activ-\nations", "other", "peak"):
        table.add_column(name, justify="left" if name == "stage" else "right", no_wrap=True)
    for s in result.stages:
        other = s.transient + s.extra + (s.baseline if cpu else 0)
        name = s.stage + ("*" if s.checkpointing else "")
        table.add_row(name, _params(s.trainable), size(s.weights), size(s.grads + s.optimizer + s.ema),
                      size(s.activations), size(other), size(s.peak))
    err_console.print(table)
    if result.stages:
        what = f"the process itself ({fmt_bytes(result.stages[0].baseline)}), " if cpu else ""
        note = "; * = with checkpointing" if any(s.checkpointing for s in result.stages) else ""
        err_console.print(f"other = {what}temporaries, and the discriminator and perceptual net of the upsampler "
                          f"stage{note}", markup=False, soft_wrap=True)
