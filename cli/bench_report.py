"""Text report of ``piti bench --compare`` (stdout)."""

from __future__ import annotations

import click


def _mib(n) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _guided(c: dict) -> str:
    if not c["guided"]:
        return ""
    if c.get("guided_evals", c["base_evals"]) == c["base_evals"]:
        return ", guided"
    return f", {c['guided_evals']} guided"


def print_compare(r: dict) -> None:
    echo = click.echo
    echo(f"{r['preset']} on {r['device_name']} ({r['device']}, {r['threads']} threads), torch {r['torch']}, "
         f"batch {r['batch_size']}, {r['steps']} timed steps after {r['warmup']} warm-up")
    for dt, m in r["matmul"].items():
        spread = ", ".join(f"{x / 1e9:.0f}" for x in m["probes"])
        echo(f"{m['size']}x{m['size']} {dt} matmul: {m['flops_per_s'] / 1e9:,.1f} GFLOP/s (median of {spread})")
    if r["train"]:
        echo("")
        echo("training step (base model; objective + AdamW + EMA)")
        paired = any("paired_fraction_of_matmul" in t for t in r["train"].values())
        echo(f"  {'variant':<14}{'s/step':>9}{'img/s':>9}{'GFLOP/s':>10}{'of matmul':>11}"
             + (f"{'per step':>10}" if paired else "")
             + f"{'peak mem':>12}{'time':>8}{'memory':>8}   (ratios vs stage2)")
        for name, t in r["train"].items():
            per_step = t.get("paired_fraction_of_matmul")
            echo(f"  {name:<14}{t['step_s']:>9.3f}{t['images_per_s']:>9.2f}{t['flops_per_s'] / 1e9:>10.1f}"
                 f"{100 * t['fraction_of_matmul']:>10.0f}%"
                 + ((f"{100 * per_step:>9.0f}%" if per_step is not None else f"{'-':>10}") if paired else "")
                 + f"{_mib(t['peak_memory_bytes']):>12}"
                 f"{_ratio(t.get('time_vs_stage2')):>8}{_ratio(t.get('memory_vs_stage2')):>8}")
        if paired:
            echo("  (of matmul: against the run's median probe; per step: the median over steps of each step "
                 "against the probe taken just before it)")
    if r["sample"]:
        echo("")
        echo("sampling step for one image (base: guided, 2 rows; upsampler: 1 row)")
        for name, s in r["sample"].items():
            echo(f"  {name:<20}{s['step_s']:>9.3f} s/step  {100 * s['fraction_of_matmul']:>4.0f}% of matmul  "
                 f"{s['speedup_vs_eager']:.2f}x vs eager")
    rec = r.get("recipes")
    if rec:
        echo("")
        echo("one image through both models (model evaluations x step cost)")
        for name in ("official", "default"):
            c = rec[name]
            echo(f"  {name:<9} base {c['sampler']} {c['steps']} ({c['base_evals']} steps"
                 f"{_guided(c)}: {c['base_s']:,.1f} s) + upsampler {c['upsampler_sampler']} "
                 f"{c['upsampler_steps']} from {c['upsampler_start']:g}T ({c['upsampler_evals']} steps: "
                 f"{c['upsampler_s']:,.1f} s) = {c['seconds']:,.1f} s")
        echo(f"  default / official: {rec['default_vs_official']:.3f}")
    for name, reason in r.get("skipped", {}).items():
        echo(f"skipped {name}: {reason}")
    if r.get("checks"):
        echo("")
        for c in r["checks"]:
            echo(f"  [{'ok' if c['ok'] else 'MISSED'}] {c['name']}: {c['value']:.3f} (target {c['target']})")
