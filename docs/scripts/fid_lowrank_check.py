"""FID from features (one N×N SVD) vs FID from the covariances (two D×D eigendecompositions).

python docs/scripts/fid_lowrank_check.py   # one CPU thread, N = 100 images, D = 2048 (Inception's width)
"""

import time

import numpy as np
import torch

from piti_core.eval.fid import FeatureStats, fid_from_stats, frechet_distance_features

torch.set_num_threads(1)
rng = np.random.default_rng(0)
x = np.abs(rng.standard_normal((100, 2048))).astype(np.float32)
y = np.abs(rng.standard_normal((100, 2048)) + 0.1).astype(np.float32)
a, b = FeatureStats(keep_features=True).update(x), FeatureStats(keep_features=True).update(y)
t = time.perf_counter()
cov = fid_from_stats(a, b)
t_cov = time.perf_counter() - t
t = time.perf_counter()
feat = frechet_distance_features(x, y)
t_feat = time.perf_counter() - t
print(f"covariances: FID {cov:.10g} in {t_cov:.3f} s; features: FID {feat:.10g} in {t_feat:.3f} s; "
      f"relative difference {abs(cov - feat) / cov:.1e}")
