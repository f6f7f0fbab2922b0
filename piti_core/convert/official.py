"""Official PITI / GLIDE state dicts → piti models (spec §9).

Module names are parallel to the official ones, so the mapping is a static table of per-key rules:

* ``*.qkv.weight`` (Conv1d [3C, C, 1], rows per head as (H, 3, d)) → Linear [3C, C], rows (3, H, d);
  ``*.qkv.bias`` likewise.
* ``*.encoder_kv.{weight,bias}`` (rows per head as (H, 2, d)) → rows (2, H, d), Conv1d → Linear.
* ``*.proj_out.weight`` Conv1d [C, C, 1] → Linear [C, C].
* ``encoder.transformer.resblocks.*.attn.c_qkv.{weight,bias}`` (rows (H, 3, d), H = encoder heads) → (3, H, d).
* every other key is copied unchanged.

GLIDE's ``base.pt`` / ``upsample.pt`` hold the decoder without a prefix plus the text side
(``transformer.*``, ``token_embedding``, ``positional_embedding``, ``padding_embedding``, ``final_ln``),
which is dropped; ``transformer_proj`` is kept.

Sizes are read from the tensors; what the tensors cannot tell (attention head width, image size) comes
from arguments whose defaults are the official values.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping, Optional

from piti_core.errors import CheckpointError

if TYPE_CHECKING:  # tensors are only handled through their methods; importing this module stays light
    import torch

HEAD_CHANNELS = 64  # official num_head_channels
ENCODER_HEADS = 8  # official task-encoder heads (hard-coded in PITI)
IMAGE_SIZE = {"base": 64, "upsampler": 256}
GLIDE_DROPPED = ("transformer.", "token_embedding", "positional_embedding", "padding_embedding", "final_ln")

_UNET_QKV = re.compile(r"^decoder\..*\.qkv\.(weight|bias)$")
_UNET_EKV = re.compile(r"^decoder\..*\.encoder_kv\.(weight|bias)$")
_UNET_PROJ = re.compile(r"^decoder\..*\.proj_out\.weight$")
_ENC_QKV = re.compile(r"^encoder\.transformer\.resblocks\.\d+\.attn\.c_qkv\.(weight|bias)$")


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def deinterleave(t: torch.Tensor, heads: int, parts: int, key: str = "") -> torch.Tensor:
    """Rows ordered (head, part, channel) → (part, head, channel); Conv1d [O, I, 1] becomes [O, I]."""
    if t.dim() == 3:
        if t.shape[-1] != 1:
            raise CheckpointError(f"'{key}' has shape {_shape(t)}; expected a 1x1 Conv1d weight [O, I, 1]")
        t = t[..., 0]
    rows = t.shape[0]
    if heads <= 0 or rows % (heads * parts):
        raise CheckpointError(f"'{key}' has {rows} rows, not divisible into {heads} heads × {parts} parts; "
                              "check the head width (num_head_channels) or encoder heads")
    d = rows // (heads * parts)
    return t.reshape(heads, parts, d, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def convert_tensor(key: str, t: torch.Tensor, head_channels: int = HEAD_CHANNELS,
                   encoder_heads: int = ENCODER_HEADS) -> torch.Tensor:
    """Apply the rule for one (prefixed) key: our layout of the official tensor ``t``."""
    if _UNET_QKV.match(key):
        return deinterleave(t, t.shape[0] // 3 // head_channels, 3, key)
    if _UNET_EKV.match(key):
        return deinterleave(t, t.shape[0] // 2 // head_channels, 2, key)
    if _UNET_PROJ.match(key):
        if t.dim() != 3 or t.shape[-1] != 1:
            raise CheckpointError(f"'{key}' has shape {_shape(t)}; expected a 1x1 Conv1d weight [C, C, 1]")
        return t[..., 0]
    if _ENC_QKV.match(key):
        return deinterleave(t, encoder_heads, 3, key)
    return t


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def glide_to_piti_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GLIDE ``base.pt`` / ``upsample.pt`` → official PITI decoder keys (``decoder.`` prefix, text side dropped)."""
    sd = _strip_module_prefix(sd)
    if any(k.startswith(("encoder.", "decoder.")) for k in sd):
        raise CheckpointError("this looks like a PITI checkpoint (keys start with encoder./decoder.), not GLIDE's "
                              "base.pt/upsample.pt; convert it without --glide")
    out = {}
    for key, value in sd.items():
        if key.startswith(GLIDE_DROPPED) and not key.startswith("transformer_proj"):
            continue
        out["decoder." + key] = value
    if "decoder.time_embed.0.weight" not in out:
        raise CheckpointError("checkpoint has no 'time_embed.0.weight'; it is not a GLIDE UNet state dict")
    return out


# ------------------------------------------------------------------------------------- inference


def _require(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"checkpoint has no key '{key}'; it is not an official PITI/GLIDE {key.split('.')[0]}")
    return sd[key]


def _indices(sd: Mapping[str, Any], prefix: str) -> list[int]:
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def infer_unet_config(sd: Mapping[str, torch.Tensor], kind: str, head_channels: int = HEAD_CHANNELS,
                      image_size: Optional[int] = None) -> dict[str, Any]:
    """UNetConfig values of the ``decoder.*`` tensors of an official state dict."""
    p = "decoder."
    image_size = image_size or IMAGE_SIZE[kind]
    te = _require(sd, p + "time_embed.0.weight")
    mc = te.shape[1]
    first = _require(sd, p + "input_blocks.0.0.weight")
    out = _require(sd, p + "out.2.weight")
    outs = _indices(sd, p + "output_blocks.")
    if not outs:
        raise CheckpointError("checkpoint has no decoder.output_blocks.*; it is not an official UNet")
    ups, attn, mults = [], [], []
    for j in outs:
        subs = _indices(sd, f"{p}output_blocks.{j}.")
        attn.append(f"{p}output_blocks.{j}.1.norm.weight" in sd)
        last = f"{p}output_blocks.{j}.{subs[-1]}."
        if len(subs) > 1 and (last + "in_layers.2.weight" in sd or last + "conv.weight" in sd):
            ups.append(j)
        mults.append(_require(sd, f"{p}output_blocks.{j}.0.in_layers.2.weight").shape[0])
    per_level = ups[0] + 1 if ups else len(outs)
    if len(outs) % per_level:
        raise CheckpointError(f"cannot read the UNet layout: {len(outs)} output blocks, upsampling at {ups}")
    levels = len(outs) // per_level
    channel_mult = []
    attention_ds = set()
    for li in range(levels):  # output order: deepest level first
        level = levels - 1 - li
        j = li * per_level
        if mults[j] % mc:
            raise CheckpointError(f"output block {j} width {mults[j]} is not a multiple of model_channels {mc}")
        channel_mult.insert(0, mults[j] // mc)
        if attn[j]:
            attention_ds.add(2 ** level)
    res0 = f"{p}input_blocks.1.0.emb_layers.1.weight"
    scale_shift = _require(sd, res0).shape[0] == 2 * _require(sd, f"{p}input_blocks.1.0.in_layers.2.weight").shape[0]
    updown = not any(k.endswith(".conv.weight") or k.endswith(".op.weight") for k in sd if k.startswith(p))
    return dict(
        image_size=image_size, in_channels=first.shape[1], out_channels=out.shape[0], model_channels=mc,
        num_res_blocks=per_level - 1, channel_mult=tuple(channel_mult),
        attention_resolutions=tuple(image_size // ds for ds in sorted(attention_ds)),
        num_head_channels=head_channels, use_scale_shift_norm=scale_shift, resblock_updown=updown,
        super_res=image_size // 4 if kind == "upsampler" else 0,
    )


def infer_encoder_config(sd: Mapping[str, torch.Tensor], heads: int = ENCODER_HEADS) -> tuple[dict[str, Any], int]:
    """(EncoderConfig values, condition channels) of the ``encoder.*`` tensors of an official state dict."""
    p = "encoder."
    width = _require(sd, p + "cls_token").shape[-1]
    n = _require(sd, p + "positional_embedding").shape[1] - 1
    grid = math.isqrt(n)
    if grid * grid != n:
        raise CheckpointError(f"encoder.positional_embedding has {n} + 1 positions; expected a square grid + CLS")
    cnn = tuple(_require(sd, f"{p}cnn.conv{i}.weight").shape[0] for i in range(1, 5))
    layers = len(_indices(sd, p + "transformer.resblocks."))
    enc = dict(width=width, layers=layers, heads=heads, cond_size=16 * grid, cnn_channels=cnn)
    return enc, _require(sd, p + "cnn.conv1.weight").shape[1]


# ------------------------------------------------------------------------------------- conversion


def convert_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                       head_channels: int = HEAD_CHANNELS, encoder_heads: int = ENCODER_HEADS,
                       where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Convert every official key and check it against ``expected`` (our key → shape).

    Raises :class:`CheckpointError` naming the key and both shapes on the first key that does not map
    or does not fit, and naming the missing keys when the checkpoint lacks some.
    """
    out = {}
    for key, value in sd.items():
        if key not in expected:
            raise CheckpointError(f"{where}: key '{key}' (shape {_shape(value)}) has no counterpart in the piti model")
        new = convert_tensor(key, value, head_channels, encoder_heads)
        if tuple(new.shape) != tuple(expected[key]):
            raise CheckpointError(f"{where}: key '{key}' has shape {_shape(value)} (converted {_shape(new)}), "
                                  f"the piti model expects {list(expected[key])}")
        out[key] = new
    missing = [k for k in expected if k not in out]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{where}: missing keys {', '.join(missing[:3])}{more}")
    return out
