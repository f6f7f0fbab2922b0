"""Whole models: a condition encoder + the UNet decoder, and the builders used by the rest of piti.

State-dict prefixes are ``encoder.`` and ``decoder.`` as in the official checkpoints. The encoder is
the task's (:meth:`piti_core.tasks.Task.build_encoder`: the PITI task encoder unless the task brings its
own) or the caption encoder (text prior pretraining); all return ``(tokens, pooled[, hints...])``, so
the decoder is the same.
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


def _task_model(unet_cfg, cfg, cond_channels: int, task=None) -> PitiModel:
    encoder = build_task_encoder(task, cfg, unet_cfg, cond_channels)
    return PitiModel(encoder, UNet.from_config(unet_cfg, cond_width=cfg.encoder.width))


def build_task_encoder(task, cfg, unet_cfg, cond_channels: int) -> nn.Module:
    """The encoder of ``task`` for the decoder ``unet_cfg`` (``cfg.model`` or ``cfg.upsampler``).

    A task that overrides :meth:`~piti_core.tasks.Task.build_encoder` builds it: with ``decoder=unet_cfg``
    when the override takes that argument, else ``build_encoder(cfg)`` for both decoders. Its output is
    checked once (:func:`check_encoder`). Without a task, or with the default method, it is the PITI task
    encoder for ``cond_channels``-channel conditions.
    """
    from piti_core.tasks import Task

    if task is None or type(task).build_encoder is Task.build_encoder:
        return TaskEncoder.from_config(cfg.encoder, cond_channels, checkpointing=unet_cfg.checkpointing,
                                       decoder=unet_cfg)
    encoder = _call_build_encoder(task, cfg, unet_cfg)
    check_encoder(encoder, task, cfg, unet_cfg, cond_channels)
    return encoder


def _call_build_encoder(task, cfg, unet_cfg):
    import inspect

    from piti_core.errors import PitiError, PluginError

    try:
        params = inspect.signature(task.build_encoder).parameters
    except (TypeError, ValueError):
        params = {}
    takes_decoder = "decoder" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    try:
        return task.build_encoder(cfg, decoder=unet_cfg) if takes_decoder else task.build_encoder(cfg)
    except PitiError:
        raise
    except Exception as exc:
        raise PluginError(f"task '{task.name}': build_encoder raised {type(exc).__name__}: {exc}") from exc


def check_encoder(encoder, task, cfg, unet_cfg, cond_channels: int, batch_size: int = 2) -> None:
    """PluginError naming the task unless ``encoder`` maps a condition batch (B, C, S, S) to what the
    decoder reads: ``(tokens (B, N, width), pooled (B, width)[, hints...])`` with ``width =
    cfg.encoder.width`` and, when there are hints, one map per decoder level
    (:func:`piti_core.models.hint.hint_levels`).

    Runs the encoder once in eval mode under ``no_grad`` on a fixed input, leaving the random state and
    the training flag as they were; skipped for an encoder on the meta device (checked once loaded).
    """
    from piti_core.errors import PitiError, PluginError

    where = f"task '{getattr(task, 'name', '?')}': build_encoder"
    if not isinstance(encoder, nn.Module):
        raise PluginError(f"{where} returned {type(encoder).__name__}, expected a torch.nn.Module")
    param = next(iter(encoder.parameters()), None)
    if param is not None and param.is_meta:
        return
    s = cfg.encoder.cond_size
    device = param.device if param is not None else None
    cond = torch.linspace(-1, 1, batch_size * cond_channels * s * s, device=device).reshape(batch_size, cond_channels, s, s)
    was_training = encoder.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out = encoder.eval()(cond)
    except PitiError:
        raise
    except Exception as exc:
        raise PluginError(f"{where}: the encoder fails on a condition batch of shape {tuple(cond.shape)}: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        encoder.train(was_training)
    problem = _encoder_output_problem(out, cfg.encoder.width, unet_cfg, batch_size)
    if problem:
        raise PluginError(f"{where}: {problem}")


def _encoder_output_problem(out, width: int, unet_cfg, b: int) -> str:
    """What is wrong with an encoder's output for the decoder ``unet_cfg``, or ""."""
    shape = lambda x: tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__  # noqa: E731
    if not isinstance(out, (tuple, list)) or len(out) < 2 or not all(isinstance(x, torch.Tensor) for x in out):
        got = f"a tensor of shape {shape(out)}" if isinstance(out, torch.Tensor) else type(out).__name__
        return (f"the encoder returned {got}; the decoder reads a tuple (tokens (B, N, {width}), "
                f"pooled (B, {width})[, hints...])")
    tokens, pooled, hints = out[0], out[1], out[2:]
    if tokens.dim() != 3 or tokens.shape[0] != b or tokens.shape[2] != width or tokens.shape[1] < 1:
        return f"the encoder's tokens have shape {shape(tokens)}, the decoder reads (B={b}, N, width={width})"
    if tuple(pooled.shape) != (b, width):
        return f"the encoder's pooled vector has shape {shape(pooled)}, the decoder reads (B={b}, width={width})"
    if not (tokens.is_floating_point() and pooled.is_floating_point()):
        return "the encoder's tokens and pooled vector must be floating point"
    if hints:
        from piti_core.models.hint import hint_levels

        levels = hint_levels(unet_cfg)
        want = [(b, c, unet_cfg.image_size >> i, unet_cfg.image_size >> i) for i, c in enumerate(levels)]
        got = [shape(h) for h in hints]
        if got != want:
            return f"the encoder's spatial hints have shapes {got}, the decoder takes {want}"
    return ""


def build_base(cfg, cond_channels: int, task=None) -> PitiModel:
    """The 64×64 (``cfg.model``) decoder with ``task``'s encoder (default: the PITI task encoder for
    ``cond_channels``-channel conditions)."""
    return _task_model(cfg.model, cfg, cond_channels, task)


def build_upsampler(cfg, cond_channels: int, task=None) -> PitiModel:
    """The super-resolution (``cfg.upsampler``) decoder with its own encoder of ``task``."""
    return _task_model(cfg.upsampler, cfg, cond_channels, task)


def build_text_prior(cfg, kind: str = "base") -> PitiModel:
    """Decoder (``cfg.model`` or ``cfg.upsampler``) + caption encoder, to pretrain the prior on captions."""
    unet_cfg = {"base": cfg.model, "upsampler": cfg.upsampler}[kind]
    encoder = TextEncoder.from_config(cfg.text, cfg.encoder.width, checkpointing=unet_cfg.checkpointing)
    return PitiModel(encoder, UNet.from_config(unet_cfg, cond_width=cfg.encoder.width))


def _text_base(cfg, cond_channels=None, task=None):
    return build_text_prior(cfg, "base")


def _text_upsampler(cfg, cond_channels=None, task=None):
    return build_text_prior(cfg, "upsampler")


# Model names used in run directories (run.json "models") → builder(cfg, cond_channels, task=None).
BUILDERS: dict[str, Callable[..., PitiModel]] = {
    "base": build_base,
    "upsampler": build_upsampler,
    "text_base": _text_base,
    "text_upsampler": _text_upsampler,
}


def build_model(name: str, cfg, cond_channels: Optional[int] = None, task=None) -> PitiModel:
    """Build the model called ``name`` in a run directory (see :data:`BUILDERS`); ``task`` (a
    :class:`~piti_core.tasks.Task`) builds the encoder of the task models (:func:`build_task_encoder`)."""
    from piti_core.errors import CheckpointError

    if name not in BUILDERS:
        raise CheckpointError(f"unknown model '{name}'; known models: {', '.join(BUILDERS)}")
    if name in ("base", "upsampler") and not cond_channels:
        raise CheckpointError(f"model '{name}' needs the number of condition channels (cond_channels)")
    return BUILDERS[name](cfg, cond_channels, task=task)


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
