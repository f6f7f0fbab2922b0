"""Toy analytic models shared by the diffusion tests (no UNet).

``gaussian_model(mu, s)``: the exact ε-predictor for data x_0 ~ N(mu, s²) elementwise under the
T=1000 cosine schedule; with s=0 it is the perfect oracle of a point mass at ``mu``.
"""

import pytest
import torch

from piti_core.diffusion.respace import build_schedule


@pytest.fixture(scope="session")
def full_cosine():
    return build_schedule("cosine", 1000)


def make_gaussian_model(mu, s, full_schedule, learned=True, v=0.0):
    """model_fn(x_t, t_orig) returning the optimal ε for N(mu, s²) data ([ε | v] if learned)."""
    ac_all = full_schedule.alphas_cumprod

    def model_fn(x, t):
        ac = ac_all[t.round().long().cpu()].to(x).reshape(-1, *([1] * (x.ndim - 1)))
        mu_t = torch.as_tensor(mu).to(x)
        x0 = mu_t + ac.sqrt() * s**2 / (ac * s**2 + 1 - ac) * (x - ac.sqrt() * mu_t)
        eps = (x - ac.sqrt() * x0) / (1 - ac).sqrt()
        if not learned:
            return eps
        return torch.cat([eps, torch.full_like(eps, v)], dim=1)

    return model_fn


@pytest.fixture
def gaussian_model(full_cosine):
    def factory(mu=0.0, s=0.5, learned=True, v=0.0):
        return make_gaussian_model(mu, s, full_cosine, learned=learned, v=v)

    return factory
