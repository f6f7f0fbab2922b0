"""Memory layout of models that only sample: channels-last UNets on the CPU.

Training keeps ``model.channels_last`` as configured (off by default: on this CPU channels-last made
the convolutions' backward 15–40 % slower). Sampling has no backward, and there oneDNN's channels-last
forward is faster: a glide base sampling step took 0.82–0.93× the time, an upsampler step 0.90–1.01×
(docs/performance.md, "Channels-last sampling on the CPU"). At the tiny preset's widths the
difference was inside the noise, so UNets narrower than :data:`CHANNELS_LAST_MIN_WIDTH` keep their
layout. On CUDA it did not pay off (H100).
"""

from __future__ import annotations

import torch

from piti_core.models.unet import UNet

CHANNELS_LAST_MIN_WIDTH = 128  # UNet.model_channels from which a CPU sampling step is channels-last


def channels_last_for_cpu_sampling(model: torch.nn.Module, device: torch.device | str) -> list[UNet]:
    """Switch ``model``'s UNets that are at least :data:`CHANNELS_LAST_MIN_WIDTH` wide to channels-last,
    in place, when ``device`` is the CPU; returns the UNets switched. For models that only sample."""
    if torch.device(device).type != "cpu":
        return []
    switched = []
    for module in model.modules():
        if isinstance(module, UNet) and not module.channels_last and module.model_channels >= CHANNELS_LAST_MIN_WIDTH:
            module.to(memory_format=torch.channels_last)
            module.channels_last = True
            switched.append(module)
    return switched
