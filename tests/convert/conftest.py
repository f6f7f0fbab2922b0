"""Small random state dicts in the official PITI layout (Conv1d 1×1 weights [O, I, 1]).

Sizes: task encoder width 64 (8 heads), 2 layers, 32×32 conditions (4 tokens); base UNet 64/128
channels at 16×16 with attention at 8×8 and 32-channel heads; upsampler 32×32 from 16×16.
"""

import math

import pytest
import torch

from piti_core.models.encoder import TaskEncoder
from piti_core.models.unet import UNet

CONV1D = (".qkv.weight", ".encoder_kv.weight", ".proj_out.weight")


def random_official_sd(unet_kwargs, enc_kwargs, cond_channels, seed=0):
    """Random tensors with the official keys and layouts (Conv1d 1×1 weights [O, I, 1])."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        enc = TaskEncoder(cond_channels, **enc_kwargs)
        unet = UNet(**unet_kwargs)
    shapes = {f"encoder.{k}": v.shape for k, v in enc.state_dict().items()}
    shapes.update({f"decoder.{k}": v.shape for k, v in unet.state_dict().items()})
    sd = {}
    for key, shape in shapes.items():
        shape = list(shape) + ([1] if key.startswith("decoder.") and key.endswith(CONV1D) else [])
        if len(shape) == 1 and key.endswith(".weight"):  # GroupNorm / InstanceNorm / LayerNorm gains
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2 and not key.endswith(("cls_token", "positional_embedding")):
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        sd[key] = t
    return sd


ENC = dict(width=64, layers=2, heads=8, cond_size=32, cnn_channels=(8, 16, 16, 32))
BASE = dict(image_size=16, in_channels=3, out_channels=6, model_channels=64, num_res_blocks=2,
            channel_mult=(1, 2), attention_resolutions=(8,), num_head_channels=32, dropout=0.0, cond_width=64)
UPS = dict(image_size=32, in_channels=6, out_channels=6, model_channels=64, num_res_blocks=1,
           channel_mult=(1, 1, 2), attention_resolutions=(8,), num_head_channels=32, dropout=0.0,
           super_res=16, cond_width=64)

@pytest.fixture
def make_official_sd():
    """make_official_sd(kind="base"|"upsampler", cond_channels=3, seed=0) -> official-format state dict."""

    def make(kind="base", cond_channels=3, seed=0):
        return random_official_sd(BASE if kind == "base" else UPS, ENC, cond_channels, seed)

    return make
