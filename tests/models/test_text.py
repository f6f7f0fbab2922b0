"""Byte-level tokenizer and the GLIDE-style caption encoder."""

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.errors import DataError
from piti_core.models import build_text_prior
from piti_core.models.text import PAD_TOKEN, TextEncoder, detokenize, tokenize


def test_tokenize_bytes_padding_truncation():
    tokens, mask = tokenize(["ab", "", "héllo wörld"], 8)
    assert tokens.shape == mask.shape == (3, 8) and tokens.dtype == torch.long
    assert tokens[0, :2].tolist() == [97, 98] and (tokens[0, 2:] == PAD_TOKEN).all()
    assert mask[0].tolist() == [True, True] + [False] * 6
    assert not mask[1].any() and (tokens[1] == PAD_TOKEN).all()  # empty caption = null condition
    assert mask[2].all()  # 13 UTF-8 bytes truncated to 8
    assert detokenize(tokenize(["a red cube on grass"], 32)[0]) == ["a red cube on grass"]
    with pytest.raises(DataError, match="list of captions"):
        tokenize("a caption", 8)


def test_encoder_interface_and_padding_embedding():
    enc = TextEncoder(width=32, layers=2, heads=4, context_length=12).eval()
    tokens, mask = tokenize(["a cat", "a dog on a mat"], 12)
    out, pooled = enc(tokens)
    assert out.shape == (2, 12, 32) and pooled.shape == (2, 32)
    torch.testing.assert_close(pooled, out[:, -1])  # GLIDE pools the last position
    torch.testing.assert_close(enc(tokens, mask)[0], out)  # mask derived from the padding id
    with torch.no_grad():
        enc.padding_embedding.add_(torch.randn_like(enc.padding_embedding))
    assert (enc(tokens)[1] - pooled).abs().max() > 1e-3
    with pytest.raises(DataError, match="context_length|expected"):
        enc(tokens[:, :5])


@pytest.mark.parametrize("causal", [False, True])
def test_causal_flag(causal):
    enc = TextEncoder(width=32, layers=2, heads=4, context_length=8, causal=causal).eval()
    a, _ = tokenize(["abcdefg"], 8)
    b = a.clone()
    b[0, 5] = ord("z")  # change a later byte
    first_a, first_b = enc(a)[0][0, :5], enc(b)[0][0, :5]
    same = torch.allclose(first_a, first_b, atol=1e-6)
    assert same == causal


def test_text_prior_forward():
    cfg = resolve_config(preset="tiny")
    model = build_text_prior(cfg).eval()
    tokens, _ = tokenize(["a red ball", ""], cfg.text.context_length)
    x = torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size)
    out = model(x, torch.tensor([1.0, 500.0]), tokens)
    assert out.shape == (2, 6, cfg.model.image_size, cfg.model.image_size)
    tok, pooled = model.encode(tokens)
    assert tok.shape == (2, cfg.text.context_length, cfg.encoder.width)
