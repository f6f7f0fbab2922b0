"""The unfold + matmul path of ``layers.Conv2d`` for small feature maps on the CPU."""

import pytest
import torch
import torch.nn.functional as F

from piti_core.models import layers
from piti_core.models.layers import Conv2d


@pytest.mark.parametrize("size,batch", [(8, 1), (4, 3), (4, 2), (5, 1)])
def test_matches_conv2d_forward_and_backward(size, batch, monkeypatch):
    calls = []
    real = layers.conv3x3_unfold
    monkeypatch.setattr(layers, "conv3x3_unfold", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    conv = Conv2d(layers.UNFOLD_MIN_CHANNELS, 7, 3, padding=1)
    x = torch.randn(batch, layers.UNFOLD_MIN_CHANNELS, size, size, requires_grad=True)
    y = conv(x)
    assert calls, "batch x pixels <= UNFOLD_MAX_PIXELS with enough channels takes the unfold path"
    ref_x = x.detach().clone().requires_grad_()
    ref = F.conv2d(ref_x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (gx, gw, gb) = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    (rx, rw, rb) = torch.autograd.grad(ref, (ref_x, conv.weight, conv.bias), g)
    for a, b in ((gx, rx), (gw, rw), (gb, rb)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_large_maps_batches_narrow_convs_strides_and_bf16_use_conv2d(monkeypatch):
    monkeypatch.setattr(layers, "conv3x3_unfold", lambda *a: pytest.fail("unfold path taken"))
    c = layers.UNFOLD_MIN_CHANNELS
    conv = Conv2d(c, 4, 3, padding=1)
    conv(torch.randn(1, c, 16, 16))  # 256 pixels > UNFOLD_MAX_PIXELS
    conv(torch.randn(2, c, 8, 8))  # a batch of 8x8 maps: oneDNN is as fast
    Conv2d(c // 2, 4, 3, padding=1)(torch.randn(1, c // 2, 8, 8))  # too few channels
    Conv2d(c, 4, 3, stride=2, padding=1)(torch.randn(1, c, 8, 8))
    Conv2d(c, 4, 1)(torch.randn(1, c, 8, 8))
    conv.to(torch.bfloat16)(torch.randn(1, c, 8, 8, dtype=torch.bfloat16))


def test_state_dict_keys_are_conv2d_keys():
    assert set(Conv2d(3, 5, 3, padding=1).state_dict()) == set(torch.nn.Conv2d(3, 5, 3, padding=1).state_dict())
