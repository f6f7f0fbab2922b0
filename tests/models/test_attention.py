"""The UNet attention block against the official QKVAttention, on per-head interleaved weights.

The reference is written from the spec's text (§1.2): qkv channels grouped per head — reshape to
(B·H, 3·d, L) and split into q, k, v; encoder_kv likewise (B·H, 2·d, S); encoder keys/values
*prepended*; q and k each scaled by d^-1/4; softmax in float32.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from piti_core.convert import convert_tensor
from piti_core.models import layers
from piti_core.models.layers import attention
from piti_core.models.unet import AttentionBlock

C, D, W, S = 96, 32, 40, 5  # channels, head width (3 heads), token width, tokens


def reference(x, tokens, sd, heads):
    b, c, hh, ww = x.shape
    h = F.group_norm(x.float(), 32, sd["norm.weight"], sd["norm.bias"], 1e-5).reshape(b, c, -1)
    qkv = F.conv1d(h, sd["qkv.weight"], sd["qkv.bias"])  # (B, 3C, L)
    ekv = F.conv1d(tokens.transpose(1, 2), sd["encoder_kv.weight"], sd["encoder_kv.bias"])  # (B, 2C, S)
    d = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    ek, ev = ekv.reshape(b * heads, 2 * d, -1).split(d, dim=1)
    k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
    scale = d ** -0.25
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return x + F.conv1d(a, sd["proj_out.weight"], sd["proj_out.bias"]).reshape(b, c, hh, ww)


@pytest.fixture
def official():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "norm.weight": 1 + 0.1 * r(C), "norm.bias": 0.1 * r(C),
        "qkv.weight": r(3 * C, C, 1) / math.sqrt(C), "qkv.bias": 0.1 * r(3 * C),
        "encoder_kv.weight": r(2 * C, W, 1) / math.sqrt(W), "encoder_kv.bias": 0.1 * r(2 * C),
        "proj_out.weight": r(C, C, 1) / math.sqrt(C), "proj_out.bias": 0.1 * r(C),
    }


def ours_from(official):
    block = AttentionBlock(C, D, W)
    prefix = "decoder.middle_block.1."
    block.load_state_dict({k: convert_tensor(prefix + k, v, head_channels=D) for k, v in official.items()})
    return block


def test_matches_official_attention(official):
    g = torch.Generator().manual_seed(1)
    x, tokens = torch.randn(2, C, 4, 6, generator=g), torch.randn(2, S, W, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours_from(official)(x, tokens), reference(x, tokens, official, C // D),
                                   atol=1e-5, rtol=1e-5)


def test_without_reordering_it_differs(official):
    block = AttentionBlock(C, D, W)
    block.load_state_dict({k: v[..., 0] if v.dim() == 3 else v for k, v in official.items()})
    x, tokens = torch.randn(2, C, 4, 4), torch.randn(2, S, W)
    with torch.no_grad():
        assert (block(x, tokens) - reference(x, tokens, official, C // D)).abs().max() > 1e-3


def test_tokens_are_the_first_keys(official, monkeypatch):
    """Condition keys/values come before the spatial ones in the key axis."""
    seen = {}

    def spy(q, k, v, is_causal=False):
        seen["k"] = k
        return attention(q, k, v, is_causal)

    monkeypatch.setattr("piti_core.models.unet.attention", spy)
    block = ours_from(official)
    x, tokens = torch.randn(1, C, 2, 2), torch.randn(1, S, W)
    with torch.no_grad():
        block(x, tokens)
        ek = block.encoder_kv(tokens)[..., :C].view(1, S, C // D, D).transpose(1, 2)
    assert seen["k"].shape == (1, C // D, S + 4, D)
    torch.testing.assert_close(seen["k"][:, :, :S], ek)


@pytest.mark.parametrize("logit_scale", [1.0, 4.0])
@pytest.mark.parametrize("low_precision", [False, True])
def test_bf16_attention_is_as_accurate_as_an_fp32_softmax(logit_scale, low_precision, monkeypatch):
    """bf16 inputs, kept bf16 (as on CUDA; the CPU flash kernel stands in for CUDA's, both keep the
    softmax in fp32) or upcast (the CPU's default): against the exact result they do no worse than the
    official mixed precision (bf16 scores, fp32 softmax, bf16 product) and about as well as
    computing everything in fp32."""
    monkeypatch.setattr(layers, "LOW_PRECISION_ATTENTION_DEVICES", ("cuda", "cpu") if low_precision else ())
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return real(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 70, 16, generator=g) for _ in range(3))
    q = q * logit_scale
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 4.0, dim=-1) @ v.double()
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(qb, kb, vb)
    assert out.dtype == torch.bfloat16
    assert seen == [torch.bfloat16 if low_precision else torch.float32]
    weights = torch.softmax(((qb * 0.5) @ (kb * 0.5).transpose(-1, -2)).float(), dim=-1).to(torch.bfloat16)
    official = weights @ vb
    upcast = real(qb.float(), kb.float(), vb.float()).to(torch.bfloat16)

    def error(t):
        d = (t.double() - exact).abs()
        return d.max().item(), d.mean().item()

    ours, theirs, fp32 = error(out), error(official), error(upcast)
    assert ours[0] <= theirs[0] and ours[1] <= theirs[1]
    assert ours[0] <= 1.25 * fp32[0] and ours[1] <= 1.25 * fp32[1]


def test_fp32_attention_stays_fp32_under_autocast():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.float32
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out, w @ v)
