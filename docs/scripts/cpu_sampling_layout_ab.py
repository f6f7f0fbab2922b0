"""A/B of the CPU sampling layout: contiguous against channels-last UNets, in one process.

    python docs/scripts/cpu_sampling_layout_ab.py --preset glide --reps 5

Builds the preset's base model and upsampler (random weights, eval mode) twice: one copy as
configured, one switched by ``channels_last_for_cpu_sampling`` with no width limit. It then alternates
one sampling step of each (the base guided, 2 rows; the upsampler 1 row, as ``piti bench --compare``
times them) in a rotating order and prints the median seconds and their ratio.
"""

import argparse
import copy
import time

import torch

from piti_core.bench import _inputs
from piti_core.config import resolve_config
from piti_core.host_memory import keep_freed_memory
from piti_core.models import inference_layout
from piti_core.models.build import build_base, build_upsampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="glide")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    keep_freed_memory()
    cfg = resolve_config(preset=args.preset)
    inference_layout.CHANNELS_LAST_MIN_WIDTH = 0
    print(f"{args.preset}, {torch.get_num_threads()} threads, {args.reps} alternations, median s per step")
    for name, build, ucfg, rows in (("base", build_base, cfg.model, 2), ("upsampler", build_upsampler, cfg.upsampler, 1)):
        torch.manual_seed(0)
        plain = build(cfg, 3).eval()
        last = copy.deepcopy(plain)
        inference_layout.channels_last_for_cpu_sampling(last, "cpu")
        inputs = _inputs(cfg, ucfg, rows, 3, torch.device("cpu"))
        times: dict[str, list[float]] = {"contiguous": [], "channels-last": []}
        with torch.no_grad():
            encoded = plain.encode(inputs["cond"])
            order = [("contiguous", plain), ("channels-last", last)]
            for model in (plain, last):  # warm-up
                model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded, inputs.get("low_res"))
            for rep in range(args.reps):
                for key, model in (order if rep % 2 == 0 else order[::-1]):
                    start = time.perf_counter()
                    model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded, inputs.get("low_res"))
                    times[key].append(time.perf_counter() - start)
        a, b = (sorted(times[k])[args.reps // 2] for k in ("contiguous", "channels-last"))
        print(f"{name:<10} contiguous {a:7.3f} s   channels-last {b:7.3f} s   ratio {b / a:.3f}", flush=True)
        del plain, last


if __name__ == "__main__":
    main()
