"""Depth and surface-normal conditions.

Depth is encoded scale-free: log depth normalised per image to [-1, 1] over its valid pixels
(invalid pixels -1), so metric (toy world, DIODE) and relative depth (disparity) look alike.
Normals are camera-space unit vectors (+x right, +y up, +z toward the camera), used as they are
(invalid pixels 0). ``depth-normal`` concatenates normals and depth (repeated to 3 channels) into
6 channels, the official layout's channel count. On the toy world, ``alignment`` scores samples through
the toy-world oracle (depth AbsRel / δ<1.25, normal angular error; docs/oracle.md).
"""

from __future__ import annotations

from piti_core.contract import DEPTH, NORMALS, ConditionSpec, DataError, Task


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


def _read_depth(source):
    """A depth file (16-bit PNG in mm, float .npy or float TIFF; data-set conventions) -> (H, W) metres, 0 = unknown."""
    from piti_core.contract import DatasetMeta, as_path, read_depth

    return read_depth(as_path(source, "a depth map"), DatasetMeta())[0]


def _fit_depth(depth, cfg):
    import torch

    from piti_core.contract import fit_condition

    return fit_condition(torch.from_numpy(depth).float()[None], "depth", cfg)


def _load_depth(source, cfg):
    """A depth file -> (1, S, S) metres, cropped and resized as the data set's depth."""
    return _fit_depth(_read_depth(source), cfg)


def _load_normals(source, cfg):
    """A normal map (RGB (n+1)/2*255 or float .npy, camera space) -> (3, S, S) unit vectors."""
    import torch

    from piti_core.contract import DatasetMeta, as_path, fit_condition, read_normals

    normals, _ = read_normals(as_path(source, "a normal map"), DatasetMeta())  # 0 where invalid
    return fit_condition(torch.from_numpy(normals).float().permute(2, 0, 1), "normals", cfg)


def oracle_geometry(samples, batch, cfg, *, depth_channel: int | None, normal_channels: int | None) -> dict[str, float]:
    """Depth (``absrel``, ``delta1``) and/or normal (``normal_deg``) alignment through the toy-world oracle.

    Targets: the batch's metric ``depth`` / ``normals`` (with their ``*_valid`` masks) when it holds them,
    else the condition's channels (``batch["cond"]``). ``{}`` off the toy world (no oracle for other data
    sets); a missing or damaged oracle raises CheckpointError. See :mod:`piti_core.eval.oracle_metrics`.
    """
    from piti_core.contract import is_toyworld_data, oracle_alignment

    if not is_toyworld_data(cfg):
        return {}
    cond, targets = batch.get("cond"), {}
    if depth_channel is not None:
        if "depth" in batch:
            targets.update(depth=batch["depth"], depth_valid=batch.get("depth_valid"))
        else:
            targets["depth_encoded"] = cond[:, depth_channel:depth_channel + 1]
    if normal_channels is not None:
        if "normals" in batch:
            targets.update(normals=batch["normals"], normals_valid=batch.get("normals_valid"))
        else:
            targets["normals"] = cond[:, normal_channels:normal_channels + 3]
    return oracle_alignment(samples, **targets)


class DepthTask(Task):
    name = "depth"
    description = "depth map -> image (per-image normalised log depth)"
    sources = ("depth",)
    fields = (DEPTH,)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=1, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        return encode_depth(sample["depth"], sample.get("depth_valid"))

    def input_suffixes(self, cfg):
        return DEPTH.suffixes  # 16-bit PNG, float .npy, float TIFF

    def input_kind(self, cfg):
        return "upload"  # a drawing holds no depth

    def preprocess(self, source, cfg):
        return self.encode({"depth": _load_depth(source, cfg)}, cfg).unsqueeze(0)

    alignment_directions = {"absrel": "lower", "delta1": "higher"}

    def alignment(self, samples, batch, cfg):
        """Median-scaled AbsRel and δ<1.25 of the toy-world oracle's depth of the samples (toy world only)."""
        return oracle_geometry(samples, batch, cfg, depth_channel=0, normal_channels=None)


class NormalTask(Task):
    name = "normal"
    description = "surface normals (camera space) -> image"
    sources = ("normals",)
    fields = (NORMALS,)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=3, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        return encode_normals(sample["normals"])

    def input_suffixes(self, cfg):
        return NORMALS.suffixes  # RGB PNG, float .npy

    def input_kind(self, cfg):
        return "upload"

    def preprocess(self, source, cfg):
        return self.encode({"normals": _load_normals(source, cfg)}, cfg).unsqueeze(0)

    alignment_directions = {"normal_deg": "lower"}

    def alignment(self, samples, batch, cfg):
        """Mean angle (degrees) between the toy-world oracle's normals of the samples and the conditions'."""
        return oracle_geometry(samples, batch, cfg, depth_channel=None, normal_channels=0)


class DepthNormalTask(Task):
    name = "depth-normal"
    description = "normals + depth (6 channels, as the official model) -> image"
    sources = ("depth", "normals")
    fields = (DEPTH, NORMALS)

    def condition_spec(self, cfg):
        return ConditionSpec(channels=6, value_range=(-1.0, 1.0))

    def encode(self, sample, cfg):
        import torch

        depth = encode_depth(sample["depth"], sample.get("depth_valid"))
        return torch.cat([encode_normals(sample["normals"]), depth.expand(3, -1, -1)], dim=0)

    def input_suffixes(self, cfg):
        return DEPTH.suffixes  # one depth file per condition; its normals are derived from it

    def input_kind(self, cfg):
        return "upload"

    def preprocess(self, source, cfg):
        """A pair (depth file, normal file), or one depth file whose normals are derived from it.

        Derived normals are computed at the file's resolution as the data set's ``normals-from-depth``
        preprocessor does (finite differences, a 60-degree horizontal field of view).
        """
        import torch

        if isinstance(source, (tuple, list)):
            if len(source) != 2:
                raise DataError("depth-normal needs a depth map, or a pair (depth map, normal map)")
            depth, normals = source
            sample = {"depth": _load_depth(depth, cfg), "normals": _load_normals(normals, cfg)}
        else:
            from piti_core.contract import fit_condition, normals_from_depth

            depth = _read_depth(source)
            normals = torch.from_numpy(normals_from_depth(depth)).permute(2, 0, 1)
            sample = {"depth": _fit_depth(depth, cfg), "normals": fit_condition(normals, "normals", cfg)}
        return self.encode(sample, cfg).unsqueeze(0)

    alignment_directions = {"absrel": "lower", "delta1": "higher", "normal_deg": "lower"}

    def alignment(self, samples, batch, cfg):
        """The depth and the normal tasks' metrics together (toy world only)."""
        return oracle_geometry(samples, batch, cfg, depth_channel=3, normal_channels=0)
