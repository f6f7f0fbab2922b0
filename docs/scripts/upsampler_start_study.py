"""Where should the glide upsampler start? Few-step upsamplers from below pure noise (docs/performance.md).

    python docs/scripts/upsampler_start_study.py RUN --out DIR [--n 48] [--seeds 0,1] [--jobs 2]

Evaluates, like docs/scripts/fewstep_sampling.py (whose rows, names and --resume it shares), the
official recipe with the upsampler from pure noise (DDPM "250" + DDPM "fast27" at start 1.0) as the
baseline, and the default base (SDE-DPM-Solver++ "6") followed by SDE-DPM-Solver++ upsamplers that start
at 1.0, 0.8, 0.6 and 0.4 of T (``sample.upsampler_start``: the upsampled low-res image noised to that
level, docs/upsampler.md). Every row is judged against the baseline of its seed by the few-step
criterion (FID <= 1.05x, alignment >= 0.95x). Writes DIR/start.json and DIR/start.md. ``--jobs`` rows
run at once (one thread each).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fewstep_sampling as fs  # noqa: E402

# (upsampler steps, start): after the truncation at start, "10" @1.0 runs 10 steps, "8" @0.8 6,
# "12" @0.6 7, "10" @0.6 6 and "12" @0.4 5
UPSAMPLERS = (("10", 1.0), ("8", 0.8), ("12", 0.6), ("10", 0.6), ("12", 0.4))


def main(argv=None) -> None:
    ap = fs.study_arguments(__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="Comma-separated seeds; every row runs with each.")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)

    from piti_core.config import load_config
    from piti_core.io import atomic_write_text
    from piti_core.plugins import get_plugin_manager

    out = Path(args.out)
    cfg = load_config(Path(args.run) / "config.json", get_plugin_manager().task_sections())
    seeds = [int(s) for s in args.seeds.split(",")]
    baseline = fs.setting("ddpm", "250", start=1.0, note="baseline: official 250 + fast27 from pure noise",
                          role="baseline")
    candidates = [fs.setting("dpmpp-sde", "6", "dpmpp-sde", steps, start=start) for steps, start in UPSAMPLERS]
    jobs = [(s, seed) for seed in seeds for s in [baseline] + candidates]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # the baselines first: they take longest
        records = list(pool.map(lambda job: fs.run_eval(args.run, out, job[0], job[1], args.n, True), jobs))
    rows, base_rows = [], {}
    for (s, seed), record in zip(jobs, records):
        row = fs.make_row(s, seed, record, cfg, args.alignment)
        if s is baseline:
            base_rows[seed] = row
        fs.judge(row, base_rows[seed])
        rows.append(row)
    atomic_write_text(out / "start.json", json.dumps(rows, indent=2) + "\n")
    md = (f"Upsampler start on `{args.run}`: n = {args.n}, seeds {args.seeds}, passes = FID <= 1.05 x baseline "
          f"and {args.alignment} >= 0.95 x baseline (same seed).\n\n" + fs.table(rows, args.alignment) + "\n")
    atomic_write_text(out / "start.md", md)
    print(md)


if __name__ == "__main__":
    main()
