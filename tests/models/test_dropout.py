"""``layers.Dropout``: the CPU training mask drawn from 16-bit slices of full-range 64-bit integers."""

import pytest
import torch
import torch.nn.functional as F

from piti_core.models import layers
from piti_core.models.layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drops_a_fraction_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.rand(1_000_000) + 0.5  # no zeros: a zero in y is a dropped element
    y = Dropout(p).train()(x)
    kept = y != 0
    n = x.numel()
    tolerance = 5 * (p * (1 - p) / n) ** 0.5  # five standard deviations
    assert abs(1 - kept.float().mean().item() - p) < tolerance
    keep = round((1 - p) * layers.DROPOUT_LEVELS)
    scale = layers.DROPOUT_LEVELS / keep
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=0, atol=0)
    # the multiplier's expectation is 1: keep probability keep / 65536 times scale 65536 / keep
    assert abs(keep / layers.DROPOUT_LEVELS * scale - 1) < 1e-12


def test_the_four_16_bit_slices_of_each_word_are_each_uniform():
    """Each 64-bit word gives four consecutive elements; an integer drawn without the top bit
    (``random_()`` alone) would keep every fourth element."""
    torch.manual_seed(1)
    p = 0.25
    x = torch.ones(4 * 250_000)
    kept = (Dropout(p).train()(x) != 0).view(-1, 4).float().mean(0)
    tolerance = 5 * (p * (1 - p) / 250_000) ** 0.5
    assert torch.all((kept - (1 - p)).abs() < tolerance), kept


def test_neighbouring_elements_are_dropped_independently():
    torch.manual_seed(2)
    kept = (Dropout(0.5).train()(torch.ones(1_000_000)) != 0).float()
    both = (kept[:-1] * kept[1:]).mean().item()  # P(both kept) = 0.25 when independent
    assert abs(both - 0.25) < 5 * (0.25 * 0.75 / 1_000_000) ** 0.5


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(3)
    x = (torch.rand(3, 8, 5, 5) + 0.5).requires_grad_()
    y = Dropout(0.3).train()(x)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * (y / x).detach(), rtol=1e-6, atol=0)


def test_a_seed_gives_the_same_mask_and_another_seed_another():
    x = torch.ones(10_000)
    d = Dropout(0.1).train()
    torch.manual_seed(4)
    a = d(x)
    torch.manual_seed(4)
    b = d(x)
    torch.manual_seed(5)
    c = d(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eval_mode_p_zero_and_the_switch_leave_nn_dropout():
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(Dropout(0.1).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    old = layers.FAST_DROPOUT
    try:
        layers.FAST_DROPOUT = False
        torch.manual_seed(6)
        y = Dropout(0.2).train()(x)
        torch.manual_seed(6)
        assert torch.equal(y, F.dropout(x, 0.2, training=True))
    finally:
        layers.FAST_DROPOUT = old


def test_inplace_and_low_precision_inputs():
    torch.manual_seed(7)
    x = torch.rand(4096) + 0.5
    y = x.clone()
    out = Dropout(0.1, inplace=True).train()(y)
    assert out.data_ptr() == y.data_ptr() and (y == 0).any()
    h = (torch.rand(4096) + 0.5).bfloat16()
    out = Dropout(0.1).train()(h)
    assert out.dtype == torch.bfloat16 and (out == 0).any() and (out != 0).any()


def test_state_dict_is_the_same_as_nn_dropout():
    assert Dropout(0.1).state_dict().keys() == torch.nn.Dropout(0.1).state_dict().keys()
