"""Count the aten operators of one guided glide base decoder pass (eval) and of a training forward+backward.

    python docs/scripts/op_count.py      # meta device: no compute, a few seconds

Each operator is at least one kernel launch on a GPU; docs/performance.md uses the count to explain
why the glide base at batch 8 is launch-bound on an H100.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from piti_core.bench import _inputs
from piti_core.config import resolve_config
from piti_core.models.build import build_base


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    cfg = resolve_config(preset="glide")
    with torch.device("meta"):
        model = build_base(cfg, 3)
    inputs = _inputs(cfg, cfg.model, 2, 3, torch.device("meta"))  # 2 rows: [cond; null] of one guided image
    encoded = model.encode(inputs["cond"])
    model.eval()
    with torch.no_grad(), Count() as count:
        model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded, None)
    print("guided sampling pass (decoder, eval):", count.n, "aten operators")
    model.train()
    with Count() as count:
        model.decode_encoded(inputs["x_t"], inputs["timesteps"], encoded, None).float().mean().backward()
    print("training forward + backward (decoder):", count.n, "aten operators")


if __name__ == "__main__":
    main()
