"""load_official reproduces the official PITI forward, checked against an independent re-implementation.

The reference below is written from the official code's description (spec §1-§2, §9): it reads the
*official* state-dict layout directly (Conv1d weights [O, I, 1], q/k/v rows interleaved per head,
encoder tokens as (B, W, S)) and computes attention the official way (reshape to (B·H, 3d, L), scale
d^-1/4 on q and k, encoder keys prepended, fp32 softmax). Small widths keep it fast.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from piti_core.convert import load_official
from piti_core.errors import CheckpointError

# ------------------------------------------------------------------ reference (official semantics)


def ref_gn(x, sd, p, swish):
    y = F.group_norm(x.float(), 32, sd[p + ".weight"], sd[p + ".bias"], 1e-5)
    return F.silu(y) if swish else y


def ref_timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def ref_resblock(x, emb, sd, p, up=False, down=False):
    h = ref_gn(x, sd, p + ".in_layers.0", True)
    if up:
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    if down:
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = F.conv2d(h, sd[p + ".in_layers.2.weight"], sd[p + ".in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[p + ".emb_layers.1.weight"], sd[p + ".emb_layers.1.bias"])[..., None, None]
    scale, shift = e.chunk(2, dim=1)
    h = ref_gn(h, sd, p + ".out_layers.0", False) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), sd[p + ".out_layers.3.weight"], sd[p + ".out_layers.3.bias"], padding=1)
    if p + ".skip_connection.weight" in sd:
        x = F.conv2d(x, sd[p + ".skip_connection.weight"], sd[p + ".skip_connection.bias"])
    return x + h


def ref_qkv_attention(qkv, ekv, heads):
    """Official QKVAttention: (B, 3·H·d, L) per-head interleaved, encoder (B, 2·H·d, S) prepended."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    ek, ev = ekv.reshape(bs * heads, ch * 2, -1).split(ch, dim=1)
    k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


def ref_attnblock(x, xf_out, sd, p, head_channels):
    b, c, hh, ww = x.shape
    qkv = F.conv1d(ref_gn(x, sd, p + ".norm", False).reshape(b, c, -1), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
    ekv = F.conv1d(xf_out, sd[p + ".encoder_kv.weight"], sd[p + ".encoder_kv.bias"])
    a = ref_qkv_attention(qkv, ekv, c // head_channels)
    return x + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"]).reshape(b, c, hh, ww)


def ref_layout(num_res_blocks, channel_mult, attention_ds):
    """Block layout of the official UNetModel.__init__ loops."""
    inputs, ds = [["conv"]], 1
    for level, _ in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            inputs.append(["res"] + (["attn"] if ds in attention_ds else []))
        if level != len(channel_mult) - 1:
            inputs.append(["down"])
            ds *= 2
    outputs = []
    for level, _ in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            layers = ["res"] + (["attn"] if ds in attention_ds else [])
            if level and i == num_res_blocks:
                layers.append("up")
                ds //= 2
            outputs.append(layers)
    return inputs, ["res", "attn", "res"], outputs


def ref_block(h, emb, xf_out, sd, prefix, layers, head_channels):
    for j, kind in enumerate(layers):
        p = f"{prefix}.{j}"
        if kind == "conv":
            h = F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], padding=1)
        elif kind == "res":
            h = ref_resblock(h, emb, sd, p)
        elif kind in ("up", "down"):
            h = ref_resblock(h, emb, sd, p, up=kind == "up", down=kind == "down")
        else:
            h = ref_attnblock(h, xf_out, sd, p, head_channels)
    return h


def ref_encoder(sd, cond, heads):
    p = "encoder."
    x = cond
    for i in range(1, 6):
        x = F.conv2d(x, sd[f"{p}cnn.conv{i}.weight"], sd[f"{p}cnn.conv{i}.bias"],
                     stride=1 if i == 1 else 2, padding=3 if i == 1 else 1)
        x = F.instance_norm(x, weight=sd[f"{p}cnn.norm{i}.weight"], bias=sd[f"{p}cnn.norm{i}.bias"], eps=1e-5)
        x = F.leaky_relu(x, 0.2)
    x = F.conv2d(x, sd[p + "cnn.conv6.weight"], sd[p + "cnn.conv6.bias"], padding=1)
    x = x.flatten(2).permute(0, 2, 1) + sd[p + "positional_embedding"][:, 1:]
    cls = (sd[p + "cls_token"] + sd[p + "positional_embedding"][:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([x, cls], dim=1)
    width = x.shape[-1]
    layers = len({k.split(".")[3] for k in sd if k.startswith(p + "transformer.resblocks.")})
    for i in range(layers):
        q = f"{p}transformer.resblocks.{i}."

        def ln(t, name):
            return F.layer_norm(t.float(), (width,), sd[q + name + ".weight"], sd[q + name + ".bias"], 1e-5)

        qkv = F.linear(ln(x, "ln_1"), sd[q + "attn.c_qkv.weight"], sd[q + "attn.c_qkv.bias"])
        bs, n_ctx, w3 = qkv.shape
        ch = w3 // heads // 3
        scale = 1 / math.sqrt(math.sqrt(ch))
        qq, kk, vv = torch.split(qkv.view(bs, n_ctx, heads, -1), ch, dim=-1)
        w = torch.softmax(torch.einsum("bthc,bshc->bhts", qq * scale, kk * scale).float(), dim=-1)
        a = torch.einsum("bhts,bshc->bthc", w, vv).reshape(bs, n_ctx, -1)
        x = x + F.linear(a, sd[q + "attn.c_proj.weight"], sd[q + "attn.c_proj.bias"])
        hdn = F.gelu(F.linear(ln(x, "ln_2"), sd[q + "mlp.c_fc.weight"], sd[q + "mlp.c_fc.bias"]))
        x = x + F.linear(hdn, sd[q + "mlp.c_proj.weight"], sd[q + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (width,), sd[p + "final_ln.weight"], sd[p + "final_ln.bias"], 1e-5)
    return x[:, -1], x[:, :-1].permute(0, 2, 1)


def ref_forward(sd, x, t, cond, layout, model_channels, head_channels, enc_heads=8, low_res=None):
    xf_proj, xf_out = ref_encoder(sd, cond, enc_heads)
    d = "decoder."
    if low_res is not None:
        up = F.interpolate(low_res, x.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, up], dim=1)
    temb = ref_timestep_embedding(t, model_channels)
    emb = F.linear(F.silu(F.linear(temb, sd[d + "time_embed.0.weight"], sd[d + "time_embed.0.bias"])),
                   sd[d + "time_embed.2.weight"], sd[d + "time_embed.2.bias"])
    emb = emb + F.linear(xf_proj, sd[d + "transformer_proj.weight"], sd[d + "transformer_proj.bias"])
    inputs, middle, outputs = layout
    hs, h = [], x
    for i, layers in enumerate(inputs):
        h = ref_block(h, emb, xf_out, sd, f"{d}input_blocks.{i}", layers, head_channels)
        hs.append(h)
    h = ref_block(h, emb, xf_out, sd, f"{d}middle_block", middle, head_channels)
    for j, layers in enumerate(outputs):
        h = ref_block(torch.cat([h, hs.pop()], dim=1), emb, xf_out, sd, f"{d}output_blocks.{j}", layers, head_channels)
    h = ref_gn(h, sd, d + "out.0", True)
    return F.conv2d(h, sd[d + "out.2.weight"], sd[d + "out.2.bias"], padding=1)


def _inputs(b, size, cond_channels, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    cond = torch.randn(b, cond_channels, 32, 32, generator=g)
    return x, torch.tensor([0.0, 517.0, 999.0][:b]), cond


def test_base_matches_official_forward(make_official_sd):
    sd = make_official_sd("base", cond_channels=3)
    model = load_official(sd, "base", head_channels=32, image_size=16)
    assert model.config.model.channel_mult == (1, 2) and model.config.model.num_res_blocks == 2
    assert model.config.model.attention_resolutions == (8,) and model.config.encoder.cond_size == 32
    x, t, cond = _inputs(3, 16, 3)
    with torch.no_grad():
        ours = model(x, t, cond)
        ref = ref_forward(sd, x, t, cond, ref_layout(2, (1, 2), {2}), 64, 32)
    assert ours.shape == (3, 6, 16, 16)
    assert ref.abs().max() > 0.1  # the random weights make every path count
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_upsampler_matches_official_forward(make_official_sd):
    sd = make_official_sd("upsampler", cond_channels=1, seed=3)
    model = load_official(sd, "upsampler", head_channels=32, image_size=32)
    assert model.config.upsampler.channel_mult == (1, 1, 2) and model.decoder.super_res
    x, t, cond = _inputs(2, 32, 1)
    low_res = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(x, t, cond, low_res=low_res)
        ref = ref_forward(sd, x, t, cond, ref_layout(1, (1, 1, 2), {4}), 64, 32, low_res=low_res)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_wrong_head_width_changes_the_output(make_official_sd):
    """The interleaved layout matters: reading heads of the wrong width gives another function."""
    sd = make_official_sd("base", cond_channels=3)
    good = load_official(sd, "base", head_channels=32, image_size=16)
    bad = load_official(sd, "base", head_channels=64, image_size=16)
    x, t, cond = _inputs(2, 16, 3)
    with torch.no_grad():
        assert (good(x, t, cond) - bad(x, t, cond)).abs().max() > 1e-3


def test_errors_name_key_and_shapes(make_official_sd):
    sd = make_official_sd("base", cond_channels=3)
    wrong = dict(sd)
    wrong["decoder.input_blocks.1.0.out_layers.3.weight"] = torch.zeros(64, 64, 3, 1)
    with pytest.raises(CheckpointError, match=r"input_blocks\.1\.0\.out_layers\.3\.weight.*\[64, 64, 3, 1\].*\[64, 64, 3, 3\]"):
        load_official(wrong, "base", head_channels=32, image_size=16)
    extra = dict(sd, **{"decoder.bogus.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"decoder\.bogus\.weight.*\[2\]"):
        load_official(extra, "base", head_channels=32, image_size=16)
    missing = {k: v for k, v in sd.items() if k != "decoder.out.2.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys decoder\.out\.2\.bias"):
        load_official(missing, "base", head_channels=32, image_size=16)
    with pytest.raises(CheckpointError, match="kind"):
        load_official(sd, "middle")
