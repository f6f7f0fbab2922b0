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

import sys
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
    from piti_core.plugins import get_plugin_manager

    cfg = load_config(Path(args.run) / "config.json", get_plugin_manager().task_sections())
    baseline = fs.setting("ddpm", "250", start=1.0, note="baseline: official 250 + fast27 from pure noise",
                          role="baseline")
    candidates = [fs.setting("dpmpp-sde", "6", "dpmpp-sde", steps, start=start) for steps, start in UPSAMPLERS]
    fs.judged_rows(args, Path(args.out), cfg, baseline, candidates, [int(s) for s in args.seeds.split(",")],
                   args.jobs, "start", "Upsampler start")


if __name__ == "__main__":
    main()
