"""Our models have exactly the official keys and shapes (spec §9, tests/data/piti_state_dict_keys.tsv).

The tsv lists every key of the released PITI base / upsampler (mask condition). The fast tests compare
shapes on the meta device; the slow ones convert full-size random state dicts (≈1.4 GB each).
"""

from pathlib import Path

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.convert import deinterleave, load_glide, load_official
from piti_core.models import build_base, build_upsampler, count_parameters

TSV = Path(__file__).resolve().parents[1] / "data" / "piti_state_dict_keys.tsv"
CONV1D = (".qkv.weight", ".encoder_kv.weight", ".proj_out.weight")
MODELS = {"base_mask": ("base", build_base), "upsample_mask": ("upsampler", build_upsampler)}


def official_shapes(model: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in TSV.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, key, shape = line.split("\t")
        if name == model:
            out[key] = tuple(int(s) for s in shape.split("x"))
    return out


def random_sd(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_tsv_is_complete():
    assert len(official_shapes("base_mask")) == 708
    assert len(official_shapes("upsample_mask")) == 722


@pytest.mark.parametrize("model", sorted(MODELS))
def test_keys_and_shapes_equal_official(model):
    kind, build = MODELS[model]
    with torch.device("meta"):
        ours = build(resolve_config(preset="glide"), 3)
    shapes = {}
    for key, value in ours.state_dict().items():
        shape = tuple(value.shape)
        if key.startswith("decoder.") and key.endswith(CONV1D):
            shape += (1,)  # our Linear == their Conv1d(k=1)
        shapes[key] = shape
    official = official_shapes(model)
    assert sorted(set(official) - set(shapes)) == []
    assert sorted(set(shapes) - set(official)) == []
    assert {k: v for k, v in shapes.items() if official[k] != v} == {}


@pytest.mark.slow
@pytest.mark.parametrize("model,count", [("base_mask", 338_015_302), ("upsample_mask", 351_345_862)])
def test_full_size_official_state_dict_loads_strictly(model, count):
    kind = MODELS[model][0]
    sd = random_sd(official_shapes(model))
    net = load_official(sd, kind)
    assert count_parameters(net) == count
    glide = resolve_config(preset="glide")
    section = "model" if kind == "base" else "upsampler"
    assert getattr(net.config, section) == getattr(glide, section)
    assert net.config.encoder == glide.encoder
    ours = net.state_dict()
    # reordered attention rows: head-interleaved (H, 3, d) -> blocks (3, H, d)
    key = "decoder.middle_block.1.qkv.weight"
    q_head1 = sd[key][3 * 64: 4 * 64, :, 0]  # rows of head 1's q in the official layout
    torch.testing.assert_close(ours[key][64:128], q_head1)
    torch.testing.assert_close(ours[key], deinterleave(sd[key], 12, 3))
    key = "encoder.transformer.resblocks.3.attn.c_qkv.bias"
    torch.testing.assert_close(ours[key][512 + 64: 512 + 128], sd[key][3 * 64 + 64: 3 * 64 + 128])  # k of head 1
    # untouched tensors are shared, not copied
    assert ours["decoder.input_blocks.0.0.weight"].data_ptr() == sd["decoder.input_blocks.0.0.weight"].data_ptr()


@pytest.mark.slow
def test_full_size_glide_checkpoint_keeps_decoder_drops_text():
    shapes = {k[len("decoder."):]: s for k, s in official_shapes("base_mask").items() if k.startswith("decoder.")}
    sd = random_sd(shapes)
    sd.update({  # GLIDE's text side (shapes shortened): dropped by the converter
        "transformer.resblocks.0.attn.c_qkv.weight": torch.zeros(12, 4),
        "token_embedding.weight": torch.zeros(10, 4),
        "positional_embedding": torch.zeros(3, 4),
        "padding_embedding": torch.zeros(3, 4),
        "final_ln.weight": torch.zeros(4),
        "final_ln.bias": torch.zeros(4),
    })
    net = load_glide(sd, "base", cond_channels=1, seed=0)
    assert count_parameters(net) == 338_012_166  # sketch: 1-channel task encoder
    torch.testing.assert_close(net.decoder.transformer_proj.weight, sd["transformer_proj.weight"])
    torch.testing.assert_close(net.decoder.out[2].weight, sd["out.2.weight"])
    again = load_glide(sd, "base", cond_channels=1, seed=0)
    torch.testing.assert_close(net.encoder.cnn.conv1.weight, again.encoder.cnn.conv1.weight)  # seeded encoder
