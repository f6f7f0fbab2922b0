"""Score a toy-world oracle on held-out renders (the numbers of docs/oracle.md).

    python docs/scripts/oracle_heldout.py [--oracle DIR] [--n 512] [--seed 777777] [--size 64 32] [--confusion]

Renders samples 0..n-1 of world SEED at each size (a world the shipped oracle was not trained on: it
saw world 1000) and prints, per size, mIoU, pixel accuracy, per-class IoU, AbsRel (median-scaled and
metric), delta<1.25 and the normal angular error as JSON lines; ``--confusion`` adds the row-normalised
confusion matrix (percent) at the first size.
"""

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oracle", default=None, help="weights folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=777_777)
    ap.add_argument("--size", type=int, nargs="+", default=[64, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--confusion", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from piti_core.eval.oracle import load_oracle
    from piti_core.eval.oracle_train import evaluate_oracle, render_set, to_unit

    oracle = load_oracle("cpu", args.oracle)
    for size in args.size:
        t0 = time.perf_counter()
        scores = evaluate_oracle(oracle, args.n, args.seed, size=size)
        scores = {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}
        print(json.dumps(dict(scores, seconds=round(time.perf_counter() - t0, 1))))
    if args.confusion:
        data = render_set(args.n, args.size[0], args.seed)
        pred = torch.cat([oracle.predict(to_unit(data["images"][i:i + 64]))["labels"] for i in range(0, args.n, 64)])
        k = len(oracle.classes)
        conf = torch.bincount(data["labels"].long().flatten() * k + pred.flatten(), minlength=k * k).reshape(k, k)
        pct = (conf.double() / conf.sum(1, keepdim=True).clamp_min(1) * 100).round().int()
        for name, row in zip(oracle.classes, pct.tolist()):
            print(f"{name:>9} " + " ".join(f"{v:3d}" for v in row))


if __name__ == "__main__":
    main()
