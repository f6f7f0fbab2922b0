"""The PITI task encoder: token layout (row-major grid, CLS last), sizes, errors."""

import pytest
import torch

from piti_core.config import resolve_config
from piti_core.errors import DataError
from piti_core.models.encoder import TaskEncoder


def test_tiny_and_glide_token_counts():
    cfg = resolve_config(preset="tiny")
    tiny = TaskEncoder.from_config(cfg.encoder, 3, decoder=cfg.model)
    tokens, pooled = tiny(torch.randn(2, 3, 64, 64))[:2]
    assert tokens.shape == (2, 16, 128) and pooled.shape == (2, 128)
    with torch.device("meta"):
        glide = TaskEncoder.from_config(resolve_config(preset="glide").encoder, 1)
    assert glide.num_tokens == 256 and glide.positional_embedding.shape == (1, 257, 512)


@pytest.mark.parametrize("size", [32, 48, 80])
def test_any_multiple_of_16(size):
    enc = TaskEncoder(2, width=32, layers=1, heads=4, cond_size=size, cnn_channels=(4, 8, 8, 16))
    tokens, _ = enc(torch.randn(1, 2, size, size))
    assert tokens.shape == (1, (size // 16) ** 2, 32)


def test_layout_row_major_cls_last():
    """With no transformer layer the output is final_ln(grid + pos[1:]) ‖ final_ln(cls + pos[0])."""
    enc = TaskEncoder(3, width=32, layers=0, heads=4, cond_size=32, cnn_channels=(4, 8, 8, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens, pooled = enc(x)
    grid = enc.cnn(x)  # (2, 32, 2, 2)
    ln = torch.nn.functional.layer_norm
    for r in range(2):
        for c in range(2):
            want = ln(grid[:, :, r, c] + enc.positional_embedding[0, 1 + 2 * r + c], (32,),
                      enc.final_ln.weight, enc.final_ln.bias)
            torch.testing.assert_close(tokens[:, 2 * r + c], want)
    want = ln(enc.cls_token[0, 0] + enc.positional_embedding[0, 0], (32,), enc.final_ln.weight, enc.final_ln.bias)
    torch.testing.assert_close(pooled, want.expand(2, -1))


def test_pooled_is_the_transformed_cls_token():
    enc = TaskEncoder(3, width=32, layers=2, heads=4, cond_size=32, cnn_channels=(4, 8, 8, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    _, pooled = enc(x)
    with torch.no_grad():
        enc.cls_token.add_(torch.randn_like(enc.cls_token))  # a constant shift would vanish in the LayerNorms
    _, changed = enc(x)
    assert (pooled - changed).abs().max() > 1e-3


def test_embeddings_are_initialised():
    enc = TaskEncoder(3, width=64, layers=1, heads=4, cond_size=64, cnn_channels=(4, 8, 8, 16))
    for p in (enc.cls_token, enc.positional_embedding):
        assert torch.isfinite(p).all() and 0.002 < p.std() < 0.05


def test_wrong_condition_shape_is_a_clear_error():
    enc = TaskEncoder(3, width=32, layers=1, heads=4, cond_size=32, cnn_channels=(4, 8, 8, 16))
    with pytest.raises(DataError, match=r"\(B, 3, 32, 32\).*cond_size=32"):
        enc(torch.randn(1, 3, 64, 64))
    with pytest.raises(DataError, match="expects"):
        enc(torch.randn(1, 1, 32, 32))
    for bad in (40, 16):
        with pytest.raises(ValueError, match="multiple of 16 and at least 32"):
            TaskEncoder(3, cond_size=bad)
