"""FID / KID maths against independent formulas, FeatureStats accumulation and the stats files."""

import json

import numpy as np
import pytest
import torch

from piti_core.errors import DataError
from piti_core.eval import fid as fid_mod
from piti_core.eval.fid import (FeatureStats, cached_stats, feature_stats, fid_from_stats, frechet_distance,
                                kernel_inception_distance, stats_cache_path)


def gaussian(n, d, seed, shift=0.0):
    """n samples (drawn with ``seed``) of a fixed correlated d-dim Gaussian, its mean moved by ``shift``."""
    params = np.random.default_rng(1000 + d)
    mix, offset = params.standard_normal((d, d)) / np.sqrt(d), params.standard_normal(d) * 0.1
    return np.random.default_rng(seed).standard_normal((n, d)) @ mix + offset + shift


def scipy_fid(mu1, s1, mu2, s2):
    """pytorch-fid's formula: ‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2 sqrtm(Σ1 Σ2))."""
    linalg = pytest.importorskip("scipy.linalg")
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_frechet_matches_scipy_sqrtm():
    a, b = gaussian(500, 64, 0), gaussian(400, 64, 1, shift=0.3)
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), scipy_fid(mu1, s1, mu2, s2)
    assert ref > 1.0
    assert abs(ours - ref) <= 1e-6 * ref
    assert abs(frechet_distance(mu2, s2, mu1, s1) - ours) <= 1e-9 * ref  # symmetric


def test_frechet_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(5)
    va, vb, mu1, mu2 = rng.uniform(0.1, 3, 32), rng.uniform(0.1, 3, 32), rng.normal(size=32), rng.normal(size=32)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(va), mu2, np.diag(vb)) == pytest.approx(exact, rel=1e-10)


def test_fid_of_a_set_with_itself_is_zero_even_when_singular():
    for n in (500, 20):  # 20 < 64: rank-deficient covariance
        s = FeatureStats().update(gaussian(n, 64, 2))
        assert 0.0 <= fid_from_stats(s, s) < 1e-8 * np.trace(s.cov)
    far = FeatureStats().update(gaussian(500, 64, 3, shift=1.0))
    assert fid_from_stats(s, far) > 10


def test_feature_stats_batches_equal_numpy():
    x = gaussian(301, 16, 4) + 100.0  # large offset: the pairwise update must stay exact
    stats = FeatureStats(keep_features=True)
    for chunk in (x[:1], x[1:50], torch.from_numpy(x[50:300]), x[300:], x[:0]):
        stats.update(chunk)
    assert stats.count == 301 and stats.dims == 16
    assert np.allclose(stats.mean, x.mean(0), rtol=0, atol=1e-12)
    assert np.allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)
    assert np.array_equal(stats.features, x.astype(np.float32))
    with pytest.raises(DataError, match="dims"):
        stats.update(np.zeros((2, 8)))
    with pytest.raises(DataError, match="NaN"):
        stats.update(np.full((2, 16), np.nan))
    with pytest.raises(DataError, match="at least 2"):
        _ = FeatureStats().update(x[:1]).cov


def brute_force_mmd2(x, y):
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_definition():
    x, y = gaussian(12, 6, 6), gaussian(12, 6, 7, shift=0.5)
    mean, std = kernel_inception_distance(x, y)  # subsets = whole sets: one exact value
    assert mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-10) and std == 0.0
    rng = np.random.default_rng(0)  # the subset draws of the default seed, by hand
    i, j = rng.choice(12, 5, replace=False), rng.choice(12, 5, replace=False)
    one, _ = kernel_inception_distance(x, y, num_subsets=1, subset_size=5)
    assert one == pytest.approx(brute_force_mmd2(x[i], y[j]), rel=1e-10)


def test_kid_same_distribution_near_zero_shifted_positive(monkeypatch):
    x, y, z = gaussian(300, 64, 8), gaussian(300, 64, 8), gaussian(300, 64, 9, shift=0.5)
    same, _ = kernel_inception_distance(x, y, num_subsets=20, subset_size=100)
    other, _ = kernel_inception_distance(x, gaussian(300, 64, 10), num_subsets=20, subset_size=100)
    shifted, std = kernel_inception_distance(x, z, num_subsets=20, subset_size=100)
    assert shifted > 10 * std > 0
    assert abs(other) < 0.05 * shifted  # an independent sample of the same distribution
    assert abs(same) < 0.1 * shifted  # the same points: overlapping subsets make it slightly negative
    monkeypatch.setattr(fid_mod, "KID_KERNEL_BYTES", 0)  # the per-subset path gives the same numbers
    assert kernel_inception_distance(x, z, num_subsets=20, subset_size=100) == pytest.approx((shifted, std), rel=1e-9)
    with pytest.raises(DataError, match="at least 2"):
        kernel_inception_distance(x[:1], z)


def test_stats_save_load_round_trip(tmp_path):
    x = gaussian(40, 8, 11)
    stats = FeatureStats(keep_features=True, meta={"dataset": "toyworld", "size": 64}).update(x)
    path = stats.save(tmp_path / "ref.safetensors")
    back = FeatureStats.load(path)
    assert back.count == 40 and back.meta == {"dataset": "toyworld", "size": 64}
    assert np.array_equal(back.mean, stats.mean) and np.allclose(back.cov, stats.cov, rtol=1e-15, atol=0)
    assert np.array_equal(back.features, stats.features)
    assert fid_from_stats(back, stats) < 1e-10
    lean = FeatureStats.load(FeatureStats().update(x).save(tmp_path / "lean.safetensors"))
    assert lean.features is None and lean.count == 40

    from safetensors.numpy import save_file

    save_file({"mu": np.zeros(8)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(DataError, match="not a piti FID statistics file"):
        FeatureStats.load(tmp_path / "foreign.safetensors")
    meta = {"format": fid_mod.FORMAT, "network": "some other net", "count": 3}
    save_file({"mu": np.zeros(8)}, str(tmp_path / "net.safetensors"), metadata={fid_mod.META_KEY: json.dumps(meta)})
    with pytest.raises(DataError, match="recompute"):
        FeatureStats.load(tmp_path / "net.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DataError, match="cannot read"):
        FeatureStats.load(tmp_path / "junk.safetensors")


def test_cached_stats_compute_once(piti_home):
    calls = []

    def compute():
        calls.append(1)
        return FeatureStats(keep_features=len(calls) > 1).update(gaussian(10, 4, 12))

    key = {"root": "/data/x", "size": 256, "n": 10}
    first = cached_stats(key, compute)
    assert stats_cache_path(key).is_file() and str(piti_home) in str(stats_cache_path(key))
    second = cached_stats(key, compute)
    assert len(calls) == 1 and np.array_equal(first.mean, second.mean) and second.meta["key"] == key
    with_feats = cached_stats(key, compute, need_features=True)  # cached file lacks features
    assert len(calls) == 2 and with_feats.features is not None
    assert stats_cache_path({**key, "size": 128}) != stats_cache_path(key)


def test_feature_stats_runs_a_model_with_progress():
    events = []
    batches = [torch.full((2, 3, 4, 4), float(i)) for i in range(3)]
    stats = feature_stats(lambda im: im.flatten(1)[:, :5], batches, keep_features=True, total=6,
                          callback=events.append)
    assert stats.count == 6 and stats.features.shape == (6, 5)
    assert [e["done"] for e in events] == [2, 4, 6] and events[0]["event"] == "fid_features"


def test_npz_stats_round_trip_as_pytorch_fid_reads_them(tmp_path):
    from piti_core.eval.fid import load_npz, save_npz

    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=5), np.cov(rng.normal(size=(20, 5)), rowvar=False)
    path = save_npz(tmp_path / "s.npz", mu, sigma)
    with np.load(path, allow_pickle=False) as f:  # what pytorch-fid does with a stats file
        assert sorted(f.files) == ["mu", "sigma"] and np.array_equal(f["mu"], mu) and np.array_equal(f["sigma"], sigma)
    got_mu, got_sigma = load_npz(path)
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)


def test_npz_stats_refuse_pickles_and_wrong_keys(tmp_path):
    from piti_core.eval.fid import load_npz

    np.savez(tmp_path / "obj.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(DataError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "keys.npz", m=np.zeros(2), s=np.eye(2))
    with pytest.raises(DataError, match="no key 'mu'"):
        load_npz(tmp_path / "keys.npz")
