"""The spatial hint: starts as a no-op, trains with the decoder frozen, and reaches every level."""

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.errors import DataError
from piti_core.models.build import build_base, build_upsampler


def _cfg(hint: int):
    return resolve_config("tiny", [], [f"encoder.hint_channels={hint}"])


@pytest.mark.parametrize("builder", [build_base, build_upsampler])
def test_hint_is_a_no_op_until_trained(builder):
    """A prior decoder with a fresh hint gives exactly the output of the same model without one."""
    torch.manual_seed(0)
    with_hint = builder(_cfg(32), 1).eval()
    without = builder(_cfg(0), 1).eval()
    state = {k: v for k, v in with_hint.state_dict().items() if not k.startswith("encoder.hint.")}
    without.load_state_dict(state)
    for p in with_hint.decoder.parameters():  # a "trained" decoder: non-zero output convs
        torch.nn.init.normal_(p, std=0.02)
    without.decoder.load_state_dict(with_hint.decoder.state_dict())
    size = with_hint.decoder.image_size
    x, t = torch.randn(2, 3, size, size), torch.tensor([5.0, 700.0])
    cond = torch.rand(2, 1, 64, 64) * 2 - 1
    low = torch.randn(2, 3, 32, 32) if with_hint.super_res else None
    with torch.no_grad():
        a, b = with_hint(x, t, cond, low), without(x, t, cond, low)
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # once the hint's output convs move, the hint changes the output
    for conv in with_hint.encoder.hint.outs:
        torch.nn.init.normal_(conv.weight, std=0.1)
    with torch.no_grad():
        assert (with_hint(x, t, cond, low) - b).abs().max() > 1e-3


def test_hint_trains_with_the_decoder_frozen():
    model = build_base(_cfg(32), 1)
    model.decoder.requires_grad_(False)
    for p in model.decoder.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x, cond = torch.randn(2, 3, 32, 32), torch.rand(2, 1, 64, 64) * 2 - 1
    model(x, torch.tensor([5.0, 700.0]), cond).square().mean().backward()
    grads = [conv.weight.grad for conv in model.encoder.hint.outs]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.decoder.parameters())


def test_one_hint_per_decoder_level():
    model = build_base(_cfg(8), 1)
    encoded = model.encode(torch.zeros(1, 1, 64, 64))
    hints = encoded[2:]
    sizes = [h.shape[-1] for h in hints]
    assert len(hints) == len(model.decoder.hint_at) == len(_cfg(8).model.channel_mult)
    assert sizes == [32, 16, 8]
    with pytest.raises(DataError, match="spatial hints"):
        model.decoder(torch.zeros(1, 3, 32, 32), torch.zeros(1), encoded[0], encoded[1], hints=hints[:2])
