"""The CPU paths of ``layers.Conv2d``: unfold + matmul for small feature maps, the nine-matmul weight gradient."""

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


@pytest.mark.parametrize("batch,h,w,cin,cout", [(1, 8, 8, 5, 7), (2, 6, 9, 3, 4), (3, 1, 1, 2, 2), (1, 12, 5, 8, 1),
                                                 (1, 1, 1, 2, 3), (1, 1, 6, 3, 2), (1, 5, 1, 2, 2),
                                                 # fewer pixels than output channels: the patch-matrix branch
                                                 (1, 2, 3, 4, 9), (1, 4, 4, 3, 20), (1, 3, 2, 5, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shift_weight_grad_matches_autograd(batch, h, w, cin, cout, channels_last):
    torch.manual_seed(0)
    x = torch.randn(batch, cin, h, w)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, requires_grad=True)
    grad_out = torch.randn(batch, cout, h, w)
    (ref,) = torch.autograd.grad(F.conv2d(x, weight, padding=1), weight, grad_out)
    grad = layers.conv3x3_weight_grad(x, grad_out)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-4)
    if batch == 1 and h * w < cout:  # one matmul against the patch matrix: already the weight's layout
        assert grad.is_contiguous()


@pytest.mark.parametrize("bias,input_grad,batch", [(True, True, 1), (False, True, 2), (True, False, 1)])
def test_training_convs_take_the_shift_weight_grad(bias, input_grad, batch, monkeypatch):
    monkeypatch.setattr(layers, "SHIFT_GRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(layers, "SHIFT_GRAD_BATCH_MIN_CHANNELS", 4)
    calls = []
    real = layers.conv3x3_weight_grad
    monkeypatch.setattr(layers, "conv3x3_weight_grad", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    conv = Conv2d(6, 5, 3, padding=1, bias=bias)
    x = torch.randn(batch, 6, 7, 9, requires_grad=input_grad)
    y = conv(x)
    ref_x = x.detach().clone().requires_grad_(input_grad)
    ref = F.conv2d(ref_x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    wanted = [t for t in (x, conv.weight, conv.bias) if t is not None and t.requires_grad]
    ref_wanted = [t for t in (ref_x, conv.weight, conv.bias) if t is not None and t.requires_grad]
    got = torch.autograd.grad(y, wanted, g)
    assert calls == [1], "a training conv within the limits computes its weight gradient as nine matmuls"
    for a, b in zip(got, torch.autograd.grad(ref, ref_wanted, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_shift_weight_grad_only_where_it_measured_faster(monkeypatch):
    monkeypatch.setattr(layers, "SHIFT_GRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(layers, "SHIFT_GRAD_BATCH_MIN_CHANNELS", 6)
    monkeypatch.setattr(layers, "SHIFT_GRAD_BATCH_MAX_PIXELS", 128)
    monkeypatch.setattr(layers, "_Conv3x3ShiftGrad", None)  # any use of the path fails

    def run(conv, x):
        conv(x).sum().backward()

    conv = Conv2d(4, 4, 3, padding=1)
    run(conv, torch.randn(2, 4, 8, 8))  # a batch: too few channels for one
    run(Conv2d(6, 6, 3, padding=1), torch.randn(3, 6, 8, 8))  # a batch of 192 pixels > the limit
    run(Conv2d(3, 4, 3, padding=1), torch.randn(1, 3, 8, 8))  # too few input channels
    run(Conv2d(4, 3, 3, padding=1), torch.randn(1, 4, 8, 8))  # too few output channels
    run(Conv2d(4, 4, 3, stride=2, padding=1), torch.randn(1, 4, 8, 8))
    monkeypatch.setattr(layers, "SHIFT_GRAD", False)
    run(conv, torch.randn(1, 4, 8, 8))  # switched off
    monkeypatch.setattr(layers, "SHIFT_GRAD", True)
    with torch.no_grad():
        conv(torch.randn(1, 4, 8, 8))  # sampling
    conv.requires_grad_(False)
    conv(torch.randn(1, 4, 8, 8, requires_grad=True)).sum().backward()  # a frozen decoder (stage 1)
    bf16 = Conv2d(4, 4, 3, padding=1).to(torch.bfloat16)
    run(bf16, torch.randn(1, 4, 8, 8, dtype=torch.bfloat16))


@pytest.mark.parametrize("size", [8, 4])  # 8x8: the unfold path's size; 4x4: the nine-matmul gradient's
def test_cpu_autocast_trains_through_conv2d(size):
    # Under CPU bf16 autocast (--dtype auto on CPUs with AVX512-BF16/AMX) the inputs stay fp32 while the
    # conv runs in bf16; piti's fp32 paths would mix the dtypes in the backward (oneDNN refused it).
    torch.manual_seed(0)
    c = max(layers.UNFOLD_MIN_CHANNELS, layers.SHIFT_GRAD_MIN_CHANNELS)
    conv = Conv2d(c, c, 3, padding=1)
    x = torch.randn(1, c, size, size, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    want = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
