"""Whole models: a condition encoder + the UNet decoder, and the builders used by the rest of piti.

State-dict prefixes are ``encoder.`` and ``decoder.`` as in the official checkpoints. The encoder is
either the PITI task encoder (condition image) or the caption encoder (text prior pretraining); both
return ``(tokens, pooled)``, so the decoder is the same.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from piti_core.models.encoder import TaskEncoder
from piti_core.models.text import TextEncoder
from piti_core.models.unet import UNet


class PitiModel(nn.Module):
    """``forward(x_t, timesteps, cond, low_res=None)`` → (B, out_channels, H, W) (eps ‖ variance v).

    Timesteps are the original 0..T-1 indices as floats. For sampling, run :meth:`encode` once per
    condition and :meth:`decode` at every step.
    """

    def __init__(self, encoder: nn.Module, decoder: UNet):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def super_res(self) -> int:
        return self.decoder.super_res

    def encode(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Condition → (tokens (B, N, width), pooled (B, width)[, spatial hints...])."""
        return self.encoder(cond)

    def decode(self, x_t: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor,
               low_res: Optional[torch.Tensor] = None, hints=None) -> torch.Tensor:
        return self.decoder(x_t, timesteps, tokens, pooled, low_res, hints=hints)

    def decode_encoded(self, x_t: torch.Tensor, timesteps: torch.Tensor, encoded: tuple,
                       low_res: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`decode` with the whole tuple :meth:`encode` returned (tokens, pooled, hints...)."""
        return self.decoder(x_t, timesteps, encoded[0], encoded[1], low_res, hints=tuple(encoded[2:]) or None)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                low_res: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.decode_encoded(x_t, timesteps, self.encode(cond), low_res)


def _task_model(unet_cfg, cfg, cond_channels: int) -> PitiModel:
    encoder = TaskEncoder.from_config(cfg.encoder, cond_channels, checkpointing=unet_cfg.checkpointing,
                                      decoder=unet_cfg)
    return PitiModel(encoder, UNet.from_config(unet_cfg, cond_width=cfg.encoder.width))


def build_base(cfg, cond_channels: int) -> PitiModel:
    """The 64×64 (``cfg.model``) decoder with a task encoder for ``cond_channels``-channel conditions."""
    return _task_model(cfg.model, cfg, cond_channels)


def build_upsampler(cfg, cond_channels: int) -> PitiModel:
    """The super-resolution (``cfg.upsampler``) decoder with its own task encoder."""
    return _task_model(cfg.upsampler, cfg, cond_channels)


def build_text_prior(cfg, kind: str = "base") -> PitiModel:
    """Decoder (``cfg.model`` or ``cfg.upsampler``) + caption encoder, to pretrain the prior on captions."""
    unet_cfg = {"base": cfg.model, "upsampler": cfg.upsampler}[kind]
    encoder = TextEncoder.from_config(cfg.text, cfg.encoder.width, checkpointing=unet_cfg.checkpointing)
    return PitiModel(encoder, UNet.from_config(unet_cfg, cond_width=cfg.encoder.width))


def _text_base(cfg, cond_channels=None):
    return build_text_prior(cfg, "base")


def _text_upsampler(cfg, cond_channels=None):
    return build_text_prior(cfg, "upsampler")


# Model names used in run directories (run.json "models") → builder(cfg, cond_channels).
BUILDERS: dict[str, Callable[..., PitiModel]] = {
    "base": build_base,
    "upsampler": build_upsampler,
    "text_base": _text_base,
    "text_upsampler": _text_upsampler,
}


def build_model(name: str, cfg, cond_channels: Optional[int] = None) -> PitiModel:
    """Build the model called ``name`` in a run directory (see :data:`BUILDERS`)."""
    from piti_core.errors import CheckpointError

    if name not in BUILDERS:
        raise CheckpointError(f"unknown model '{name}'; known models: {', '.join(BUILDERS)}")
    if name in ("base", "upsampler") and not cond_channels:
        raise CheckpointError(f"model '{name}' needs the number of condition channels (cond_channels)")
    return BUILDERS[name](cfg, cond_channels)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_weights(state_dict, where: str = "checkpoint") -> None:
    """CheckpointError unless every tensor is floating point and finite; names the first bad key.

    One ``isfinite`` pass per tensor: loading corrupt weights would otherwise sample noise and
    report success.
    """
    from piti_core.errors import CheckpointError

    not_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if not_float:
        key = not_float[0]
        more = f" (and {len(not_float) - 1} more)" if len(not_float) > 1 else ""
        dtype = str(state_dict[key].dtype).replace("torch.", "")
        raise CheckpointError(f"{where}: tensor '{key}' has dtype {dtype}{more}; model weights are floating "
                              "point, so this is not a weight file for this model")
    for key, value in state_dict.items():
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: tensor '{key}' holds NaN or infinite values; the weights are "
                                  "corrupt (a diverged or damaged run): use another checkpoint")


def load_weights(model: nn.Module, state_dict, where: str = "checkpoint", assign: bool = False) -> nn.Module:
    """Load ``state_dict`` strictly, raising CheckpointError that names the key and both shapes.

    Where the model holds a floating-point tensor the given one must be floating point and finite
    (:func:`check_weights`). ``assign=True`` makes the model's parameters the given tensors (no copy),
    for models built on the meta device.
    """
    from piti_core.errors import CheckpointError

    expected = model.state_dict()
    for key, value in state_dict.items():
        if key not in expected:
            raise CheckpointError(f"{where}: unexpected key '{key}' (shape {list(value.shape)}) for this model")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{where}: key '{key}' has shape {list(value.shape)}, "
                                  f"the model expects {list(expected[key].shape)}")
    missing = [k for k in expected if k not in state_dict]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{where}: missing keys {', '.join(missing[:3])}{more}")
    check_weights({k: v for k, v in state_dict.items() if expected[k].is_floating_point()}, where)
    model.load_state_dict(state_dict, strict=True, assign=assign)
    if assign:  # assigned tensors keep their own layout; restore channels_last where configured
        for module in model.modules():
            if isinstance(module, UNet) and module.channels_last:
                module.to(memory_format=torch.channels_last)
    return model
