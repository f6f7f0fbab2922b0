"""Guidance in a limited interval: cheaper base steps at equal quality? (docs/performance.md)

    python docs/scripts/guidance_interval_study.py RUN --out DIR [--n 48] [--seed 0] [--jobs 2]

Evaluates, like docs/scripts/fewstep_sampling.py (whose rows, names and --resume it shares: point --out
at the few-step study's folder to reuse its baseline), the official recipe as the baseline and
candidate settings with ``--guidance-interval`` on the tiny defaults' upsampler (DPM-Solver++ "12" from
the run's upsampler_start): DDPM 50 / 35 / 30 base steps with guidance in t/T [0.3, 0.7] (the middle,
as the paper recommends), DDPM 50 / 35 with guidance in [0.3, 1] (none only at low noise), and DDPM 35
guided at every step for comparison. Outside the interval the base runs the conditional row alone, so
a step there costs one decoder row instead of two. Each row is judged against the baseline by the
few-step criterion (FID <= 1.05x, edge F1 >= 0.95x). Writes DIR/interval.json and DIR/interval.md.
``--jobs`` rows run at once (one thread each).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fewstep_sampling as fs  # noqa: E402


def main(argv=None) -> None:
    ap = fs.study_arguments(__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)

    from piti_core.config import load_config
    from piti_core.plugins import get_plugin_manager

    out = Path(args.out)
    cfg = load_config(Path(args.run) / "config.json", get_plugin_manager().task_sections())
    start = cfg.sample.upsampler_start
    baseline = fs.setting("ddpm", "250", start=start, note="baseline: official 250 + fast27", role="baseline")
    up = ("dpmpp", "12")
    candidates = [fs.setting("ddpm", "35", *up, start=start)]
    candidates += [fs.setting("ddpm", k, *up, start=start, interval=(0.3, 0.7)) for k in ("50", "35", "30")]
    candidates += [fs.setting("ddpm", k, *up, start=start, interval=(0.3, 1.0)) for k in ("50", "35")]
    fs.judged_rows(args, out, cfg, baseline, candidates, [args.seed], args.jobs, "interval", "Guidance interval")


if __name__ == "__main__":
    main()
