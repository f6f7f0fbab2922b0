"""Depth and surface-normal conditions.

Depth is encoded scale-free: log depth normalised per image to [-1, 1] over its valid pixels
(invalid pixels -1), so metric (toy world, DIODE) and relative depth (disparity) look alike.
Normals are camera-space unit vectors (+x right, +y up, +z toward the camera), used as they are
(invalid pixels 0). ``depth-normal`` concatenates normals and depth (repeated to 3 channels) into
6 channels, the official layout's channel count.
"""

from __future__ import annotations

from piti_core.errors import DataError
from piti_core.tasks import ConditionSpec, Task


def encode_depth(depth, valid=None):
    import torch

    d = depth.float()
    valid = (d > 0) & torch.isfinite(d) if valid is None else valid & (d > 0) & torch.isfinite(d)
    out = torch.full_like(d, -1.0)
    if valid.any():
        logd = torch.log(d[valid])
        lo, hi = logd.min(), logd.max()
        out[valid] = (logd - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1
    return out


def encode_normals(normals):
    import torch

    n = normals.float()
    norm = n.norm(dim=0, keepdim=True)
    return torch.where(norm > 1e-3, n / norm.clamp_min(1e-6), torch.zeros_like(n))


def _load_depth(source, cfg):
    """A depth file (16-bit PNG in mm, float .npy or float TIFF; data-set conventions) -> (1, S, S) metres."""
    import torch

    from piti_core.data.readers import read_depth
    from piti_core.data.records import DatasetMeta
    from piti_plugins.common import as_path, fit_condition

    depth, _ = read_depth(as_path(source, "a depth map"), DatasetMeta())  # 0 where invalid
    return fit_condition(torch.from_numpy(depth).float()[None], "depth", cfg)


def _load_normals(source, cfg):
    """A normal map (RGB (n+1)/2*255 or float .npy, camera space) -> (3, S, S) unit vectors."""
    import torch

    from piti_core.data.readers import read_normals
    from piti_core.data.records import DatasetMeta
    from piti_plugins.common import as_path, fit_condition

    normals, _ = read_normals(as_path(source, "a normal map"), DatasetMeta())  # 0 where invalid
    return fit_condition(torch.from_numpy(normals).float().permute(2, 0, 1), "normals", cfg)


class DepthTask(Task):
    name = "depth"
    description = "depth map -> image (per-image normalised log depth)"
    sources = ("depth",)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=1, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        return encode_depth(sample["depth"], sample.get("depth_valid"))

    def preprocess(self, source, cfg):
        return self.encode({"depth": _load_depth(source, cfg)}, cfg).unsqueeze(0)


class NormalTask(Task):
    name = "normal"
    description = "surface normals (camera space) -> image"
    sources = ("normals",)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=3, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        return encode_normals(sample["normals"])

    def preprocess(self, source, cfg):
        return self.encode({"normals": _load_normals(source, cfg)}, cfg).unsqueeze(0)


class DepthNormalTask(Task):
    name = "depth-normal"
    description = "normals + depth (6 channels, as the official model) -> image"
    sources = ("depth", "normals")

    def condition_spec(self, cfg):
        return ConditionSpec(channels=6, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        import torch

        depth = encode_depth(sample["depth"], sample.get("depth_valid"))
        return torch.cat([encode_normals(sample["normals"]), depth.expand(3, -1, -1)], dim=0)

    def preprocess(self, source, cfg):
        """``source`` is a pair (depth file, normal file)."""
        if not isinstance(source, (tuple, list)) or len(source) != 2:
            raise DataError("depth-normal needs two files: a depth map and a normal map")
        depth, normals = source
        sample = {"depth": _load_depth(depth, cfg), "normals": _load_normals(normals, cfg)}
        return self.encode(sample, cfg).unsqueeze(0)
