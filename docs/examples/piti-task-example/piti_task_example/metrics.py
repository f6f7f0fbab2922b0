"""The ``chroma-error`` metric: how far the samples' colours are from the real photos' (lower is better)."""

from piti_core.contract import MeanMetric


def chroma(images):
    """RGB (B, 3, H, W) in [-1, 1] -> BT.601 chroma (Cb, Cr) (B, 2, H, W) on a [0, 1] scale; 0 for grey."""
    import torch

    r, g, b = ((images.float().clamp(-1, 1) + 1) / 2).unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([0.564 * (b - y), 0.713 * (r - y)], 1)


class ChromaError(MeanMetric):
    """Mean absolute chroma difference between each sample and its real photo: the colours a
    colouriser chose against the true ones, whatever the luminance."""

    name = "chroma-error"
    direction = "lower"
    needs = frozenset({"samples", "real"})
    tasks = ("colorize",)
    label = "chroma error vs. the real photo"

    def compute(self, batch, ctx):
        return float((chroma(batch.samples) - chroma(batch.real.to(batch.samples.device))).abs().mean())
