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

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fewstep_sampling as fs  # noqa: E402


def main(argv=None) -> None:
    ap = fs.study_arguments(__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)

    from piti_core.config import load_config
    from piti_core.io import atomic_write_text
    from piti_core.plugins import get_plugin_manager

    out = Path(args.out)
    cfg = load_config(Path(args.run) / "config.json", get_plugin_manager().task_sections())
    start = cfg.sample.upsampler_start
    baseline = fs.setting("ddpm", "250", start=start, note="baseline: official 250 + fast27", role="baseline")
    up = ("dpmpp", "12")
    candidates = [fs.setting("ddpm", "35", *up, start=start)]
    candidates += [fs.setting("ddpm", k, *up, start=start, interval=(0.3, 0.7)) for k in ("50", "35", "30")]
    candidates += [fs.setting("ddpm", k, *up, start=start, interval=(0.3, 1.0)) for k in ("50", "35")]
    base_row = fs.make_row(baseline, args.seed, fs.run_eval(args.run, out, baseline, args.seed, args.n, True), cfg,
                           args.alignment)
    fs.judge(base_row, base_row)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(lambda s: fs.run_eval(args.run, out, s, args.seed, args.n, True), candidates))
    rows = [base_row]
    for s, record in zip(candidates, records):
        row = fs.make_row(s, args.seed, record, cfg, args.alignment)
        fs.judge(row, base_row)
        rows.append(row)
    atomic_write_text(out / "interval.json", json.dumps(rows, indent=2) + "\n")
    md = (f"Guidance interval on `{args.run}`: n = {args.n}, seed {args.seed}, passes = FID <= 1.05 x baseline "
          f"and {args.alignment} >= 0.95 x baseline.\n\n" + fs.table(rows, args.alignment) + "\n")
    atomic_write_text(out / "interval.md", md)
    print(md)


if __name__ == "__main__":
    main()
