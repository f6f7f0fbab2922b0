"""A third-party-style plugin for the tests: a task with its own encoder architecture, and metrics.

``convsketch`` reads sketches like the built-in task but encodes them with :class:`ConvPoolEncoder`
(one conv, a g×g average-pool grid of tokens, a linear pooled vector), sized from its own config
section (``convsketch.grid``) through today's one-argument ``build_encoder(cfg)``. ``convsketch2`` uses
the ``decoder=`` form. ``register_metrics`` registers a :class:`~piti_core.metrics.Metric` for the
sketch tasks, one for the mask task only, and a legacy ``register(name, fn)`` metric.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from piti_core.hookspecs import hookimpl
from piti_core.metrics import MeanMetric
from piti_plugins.sketch.task import SketchOptions, SketchTask


class ConvPoolEncoder(nn.Module):
    """Condition (B, C, S, S) -> (tokens (B, grid², width), pooled (B, width)); no transformer."""

    def __init__(self, in_channels: int, width: int, grid: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(width, width)

    def forward(self, cond):
        tokens = self.pool(torch.relu(self.conv(cond))).flatten(2).transpose(1, 2)
        return tokens, self.proj(tokens.mean(1))


@attrs.frozen
class ConvOptions(SketchOptions):
    grid: int = attrs.field(default=3, validator=attrs.validators.gt(0))


class ConvSketchTask(SketchTask):
    name = "convsketch"
    description = "sketch -> image through a conv + pooling encoder"
    config_class = ConvOptions

    def build_encoder(self, cfg):
        return ConvPoolEncoder(self.condition_spec(cfg).channels, cfg.encoder.width, self.options(cfg).grid)


class DecoderAwareTask(ConvSketchTask):
    """``build_encoder(cfg, decoder=...)``: one grid cell per 16 pixels of the decoder it feeds."""

    name = "convsketch2"
    calls: list = []

    def build_encoder(self, cfg, decoder=None):
        decoder = decoder or cfg.model
        type(self).calls.append(decoder.image_size)
        return ConvPoolEncoder(self.condition_spec(cfg).channels, cfg.encoder.width, max(1, decoder.image_size // 16))


class MeanBrightness(MeanMetric):
    """Mean brightness of the samples in [0, 1]: a metric a plugin brings, higher is better."""

    name = "mean-brightness"
    direction = "higher"
    needs = frozenset({"samples"})
    tasks = ("sketch", "convsketch")
    label = "mean brightness"

    def compute(self, batch, ctx):
        return float(((batch.samples + 1) / 2).mean())


class MaskOnly(MeanMetric):
    name = "mask-only"
    direction = "lower"
    needs = frozenset({"samples"})
    tasks = ("mask",)

    def compute(self, batch, ctx):
        raise AssertionError("a mask metric ran on another task")


def legacy_psnr(samples, batch, cfg):
    """A metric in the pre-v2 form ``register(name, fn)``: fn(samples, batch, cfg) -> value."""
    return 10.0


@hookimpl
def register_tasks(register):
    register(ConvSketchTask())
    register(DecoderAwareTask())


@hookimpl
def register_metrics(register):
    register(MeanBrightness())
    register(MaskOnly())
    register("legacy_psnr", legacy_psnr)
