"""FID and KID from Inception pool3 features, without scipy; cached reference statistics.

- :class:`FeatureStats` accumulates feature batches into a float64 mean and covariance (Chan et al.'s
  pairwise update, so batches of any size merge exactly) and optionally keeps the features for KID.
- :func:`frechet_distance`: ``‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½``. The last trace
  is the nuclear norm of ``Σ1^½ Σ2^½`` (the singular values of that product are the square roots of
  the eigenvalues of ``Σ1^½ Σ2 Σ1^½``), with the PSD square roots taken by ``eigh`` (negative rounding
  eigenvalues clipped to 0). Everything is symmetric and real: no complex parts to discard, no ε
  offsets; it equals the usual ``tr sqrtm(Σ1 Σ2)`` (tests compare with ``scipy.linalg.sqrtm``).
- :func:`kernel_inception_distance`: the unbiased MMD² with the cubic polynomial kernel
  ``k(x, y) = (xᵀy / d + 1)³`` averaged over random subsets (Bińkowski et al. 2018; defaults 100
  subsets of 1000 as in torch-fidelity and clean-fid), returned as (mean, std).
- :meth:`FeatureStats.save` / :meth:`FeatureStats.load`: one safetensors file (``mu``, ``sigma``,
  optionally ``features``) whose header metadata holds JSON (format, network, count, user fields);
  :func:`cached_stats` keeps reference statistics in ``$PITI_HOME/cache/fid_stats/``.
- :func:`save_npz` / :func:`load_npz`: pytorch-fid's statistics format (``mu``, ``sigma`` in an
  ``.npz``), read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from piti_core.errors import DataError

FORMAT = "piti-fid-stats/1"
NETWORK = "inception-2015-12-05/pool3 (tf1-bilinear 299, 8-bit input)"  # what the features mean
META_KEY = "piti_fid_stats"


def _as_array(features) -> np.ndarray:
    if hasattr(features, "detach"):  # torch tensor
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"features must be a (N, D) matrix; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("features contain NaN or inf (are the images finite?)")
    return x


class FeatureStats:
    """Running mean and covariance (float64) of feature batches; ``keep_features`` also stores them.

    >>> stats = FeatureStats(); stats.update(model(images))   # any number of batches
    >>> stats.mean, stats.cov, stats.count
    """

    def __init__(self, keep_features: bool = False, meta: Mapping[str, Any] | None = None):
        self.keep_features = keep_features
        self.meta: dict[str, Any] = dict(meta or {})
        self.count = 0
        self._mean: np.ndarray | None = None
        self._scatter: np.ndarray | None = None  # Σ (x − mean)(x − mean)ᵀ
        self._chunks: list[np.ndarray] = []

    @property
    def dims(self) -> int | None:
        return None if self._mean is None else int(self._mean.shape[0])

    def update(self, features) -> "FeatureStats":
        """Add a batch (N, D) of features (torch tensor or array)."""
        x = _as_array(features)
        if x.shape[0] == 0:
            return self
        if self.dims is not None and x.shape[1] != self.dims:
            raise DataError(f"feature batch has {x.shape[1]} dims, the statistics have {self.dims}")
        n_b, mean_b = x.shape[0], x.mean(axis=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self._mean is None:
            self._mean, self._scatter = mean_b, scatter_b
        else:
            n = self.count
            delta = mean_b - self._mean
            total = n + n_b
            self._mean = self._mean + delta * (n_b / total)
            self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (n * n_b / total)
        self.count += n_b
        if self.keep_features:
            self._chunks.append(x.astype(np.float32))
        return self

    @property
    def mean(self) -> np.ndarray:
        self._need(1)
        return self._mean

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by N − 1), like ``np.cov(features, rowvar=False)``."""
        self._need(2)
        return self._scatter / (self.count - 1)

    @property
    def features(self) -> np.ndarray | None:
        """All features seen (float32), or None when they were not kept."""
        if not self._chunks:
            return None
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def _need(self, n: int) -> None:
        if self.count < n:
            raise DataError(f"FID statistics need at least {n} images; got {self.count}")

    # ---------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Write ``mu``, ``sigma`` (float64) and, when kept, ``features`` (float32) atomically."""
        from safetensors.numpy import save_file

        from piti_core.io import atomic_write

        tensors = {"mu": np.ascontiguousarray(self.mean), "sigma": np.ascontiguousarray(self.cov)}
        if self.features is not None:
            tensors["features"] = np.ascontiguousarray(self.features)
        meta = {"format": FORMAT, "network": NETWORK, "count": self.count, "dims": self.dims,
                "meta": self.meta}
        path = Path(path)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Read a file written by :meth:`save` (``features`` come back when they were saved)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"FID statistics file {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                header = json.loads((f.metadata() or {}).get(META_KEY, "null"))
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"cannot read FID statistics {path}: {exc}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise DataError(f"{path} is not a piti FID statistics file (format {FORMAT}); recompute it")
        if header.get("network") != NETWORK:
            raise DataError(f"{path} holds features of {header.get('network')!r}, not {NETWORK!r}; recompute it")
        mu, sigma, count = arrays.get("mu"), arrays.get("sigma"), int(header.get("count", 0))
        if mu is None or sigma is None or sigma.shape != (mu.shape[0],) * 2 or count < 2:
            raise DataError(f"{path} is damaged (mu/sigma missing, misshapen or fewer than 2 images); recompute it")
        stats = cls(keep_features="features" in arrays, meta=header.get("meta") or {})
        stats.count = count
        stats._mean = mu.astype(np.float64)
        stats._scatter = sigma.astype(np.float64) * (count - 1)
        if "features" in arrays:
            stats._chunks = [arrays["features"].astype(np.float32)]
        return stats


def save_npz(path: str | Path, mu, sigma) -> Path:
    """Write ``mu`` (D,) and ``sigma`` (D, D) as pytorch-fid's ``.npz`` (float64), atomically."""
    from piti_core.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))

    path = Path(path)
    atomic_write(path, write)
    return path


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of a pytorch-fid ``.npz`` statistics file; a DataError names what is wrong.

    Object arrays (pickles) are refused; ``mu`` must be (D,), ``sigma`` (D, D), both finite numbers.
    """
    import zipfile

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise DataError(f"{path} is a single .npy array, not an .npz with keys mu and sigma")
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise DataError(f"{path} has no key {missing[0]!r} (keys: {', '.join(f.files) or 'none'}); "
                                "an FID statistics .npz holds mu and sigma")
            mu, sigma = f["mu"], f["sigma"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read FID statistics {path}: {detail} (expected an .npz with arrays mu and sigma, "
                        "no pickles)") from None
    if mu.dtype.kind not in "fiu" or sigma.dtype.kind not in "fiu":
        raise DataError(f"{path}: mu and sigma must be numeric arrays; got {mu.dtype} and {sigma.dtype}")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise DataError(f"{path}: sigma must be (D, D) for mu of shape (D,); got mu {mu.shape}, sigma {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: mu or sigma contains NaN or inf; recompute the statistics")
    return mu.astype(np.float64), sigma.astype(np.float64)


def stats_cache_path(key: Mapping[str, Any]) -> Path:
    """Where :func:`cached_stats` keeps the statistics for ``key`` (a JSON-able description)."""
    from piti_core.data.cache import piti_home

    blob = json.dumps({"network": NETWORK, **dict(key)}, sort_keys=True, default=str)
    return piti_home() / "cache" / "fid_stats" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.safetensors"


def cached_stats(key: Mapping[str, Any], compute: Callable[[], FeatureStats], *, refresh: bool = False,
                 need_features: bool = False) -> FeatureStats:
    """Reference statistics for ``key`` from the cache, else ``compute()`` them and store them.

    ``key`` must describe everything the statistics depend on (data set root and split, resolution,
    number of images, file sizes/mtimes ...). ``need_features`` (for KID) rejects a cached file
    that was saved without features. A damaged cache file is recomputed.
    """
    path = stats_cache_path(key)
    if path.is_file() and not refresh:
        try:
            stats = FeatureStats.load(path)
            if stats.features is not None or not need_features:
                return stats
        except DataError:
            pass
    stats = compute()
    stats.meta.setdefault("key", json.loads(json.dumps(dict(key), default=str)))
    try:
        stats.save(path)
    except OSError:
        pass  # a read-only PITI_HOME only costs the recomputation next time
    return stats


# -------------------------------------------------------------------------------------- metrics
def _sqrt_psd(a):  # float64 torch tensor; torch's LAPACK is far faster than numpy's here
    import torch

    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0.0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise DataError(f"FID statistics do not match: mu {mu1.shape} / {mu2.shape}, "
                        f"sigma {sigma1.shape} / {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise DataError("FID statistics contain NaN or inf")
    import torch

    diff = mu1 - mu2
    s1, s2 = _sqrt_psd(torch.from_numpy(sigma1)), _sqrt_psd(torch.from_numpy(sigma2))
    tr_covmean = float(torch.linalg.svdvals(s1 @ s2).sum())
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))  # only rounding can make it negative


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two :class:`FeatureStats` (each needs at least 2 images)."""
    if a.dims != b.dims:
        raise DataError(f"cannot compare statistics of {a.dims}-d and {b.dims}-d features")
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def frechet_distance_features(features1, features2) -> float:
    """The same FID straight from two feature sets (N1, D), (N2, D): fast when N1, N2 ≪ D.

    With A, B the centred features, Σ1 = AᵀA/(N1−1) and Σ2 = BᵀB/(N2−1); the non-zero eigenvalues of
    Σ1^½ Σ2 Σ1^½ (those of Σ1 Σ2) are the squared singular values of A Bᵀ/√((N1−1)(N2−1)), so the
    trace term is one N1 × N2 SVD instead of two D × D eigendecompositions (exact, no approximation).
    """
    import torch

    x, y = _as_array(features1), _as_array(features2)
    if x.shape[1] != y.shape[1]:
        raise DataError(f"cannot compare {x.shape[1]}-d and {y.shape[1]}-d features")
    if min(x.shape[0], y.shape[0]) < 2:
        raise DataError(f"FID needs at least 2 images per set; got {x.shape[0]} and {y.shape[0]}")
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    na, nb = x.shape[0] - 1, y.shape[0] - 1
    diff = x.mean(axis=0) - y.mean(axis=0)
    tr_covmean = float(torch.linalg.svdvals(torch.from_numpy(a @ b.T)).sum()) / np.sqrt(na * nb)
    fid = diff @ diff + (a * a).sum() / na + (b * b).sum() / nb - 2.0 * tr_covmean
    return float(max(fid, 0.0))


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² from the kernel matrices of two equally large samples (m × m each)."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


KID_KERNEL_BYTES = 512 * 2**20  # precompute the full kernel matrices when they fit in this much memory


def kernel_inception_distance(features1, features2, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) between two feature sets (N1, D), (N2, D).

    Each subset draws ``min(subset_size, N1, N2)`` rows of each set without replacement (one subset
    when that is both whole sets: every draw would give the same value); the estimate is unbiased
    per subset, so it can be slightly negative for equal distributions. Float64 throughout.
    """
    x, y = _as_array(features1), _as_array(features2)
    if x.shape[1] != y.shape[1]:
        raise DataError(f"cannot compare {x.shape[1]}-d and {y.shape[1]}-d features")
    n1, n2 = x.shape[0], y.shape[0]
    m = min(subset_size, n1, n2)
    if m < 2:
        raise DataError(f"KID needs at least 2 images per set; got {n1} and {n2}")
    if num_subsets < 1:
        raise DataError(f"KID needs num_subsets >= 1; got {num_subsets}")
    if m == n1 == n2:
        num_subsets = 1
    rng = np.random.default_rng(seed)
    full = (n1 * n1 + n2 * n2 + n1 * n2) * 8 <= KID_KERNEL_BYTES
    if full:  # each subset then only sums sub-blocks instead of redoing D-dim products
        k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    mmds = []
    for _ in range(num_subsets):
        i, j = rng.choice(n1, m, replace=False), rng.choice(n2, m, replace=False)
        if full:
            mmds.append(_mmd2_unbiased(k_xx[np.ix_(i, i)], k_yy[np.ix_(j, j)], k_xy[np.ix_(i, j)]))
        else:
            a, b = x[i], y[j]
            mmds.append(_mmd2_unbiased(_poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)))
    return float(np.mean(mmds)), float(np.std(mmds))


# ------------------------------------------------------------------------------------- features
def feature_stats(model, batches: Iterable, *, keep_features: bool = False, total: int | None = None,
                  callback: Callable[[dict], None] | None = None, meta: Mapping[str, Any] | None = None
                  ) -> FeatureStats:
    """Run the FID network over image batches (each (B, 3, H, W), uint8 or [-1, 1]) into stats.

    ``callback({"event": "fid_features", "done": images so far, "total": total})`` after each batch.
    """
    import torch

    stats = FeatureStats(keep_features=keep_features, meta=meta)
    with torch.inference_mode():
        for images in batches:
            stats.update(model(images))
            if callback is not None:
                callback({"event": "fid_features", "done": stats.count, "total": total})
    return stats
