"""Official PITI and GLIDE checkpoints → piti models and run directories (spec §9).

* :func:`load_official` — an official PITI state dict (``base_mask.pt`` ...) → a :class:`PitiModel`
  whose ``forward(x_t, timesteps, cond, low_res=None)`` equals the official model's.
* :func:`load_glide` — GLIDE's ``base.pt`` / ``upsample.pt`` → decoder weights + a fresh task encoder.
* :func:`convert_checkpoints` — either of them, read from ``.pt`` files, into a run directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from piti_core.convert.official import (
    ENCODER_HEADS,
    HEAD_CHANNELS,
    convert_state_dict,
    convert_tensor,
    deinterleave,
    glide_to_piti_keys,
    infer_encoder_config,
    infer_unet_config,
)
from piti_core.errors import CheckpointError

__all__ = [
    "convert_checkpoints", "convert_state_dict", "convert_tensor", "deinterleave", "glide_to_piti_keys",
    "infer_encoder_config", "infer_unet_config", "load_glide", "load_official", "official_config",
    "read_checkpoint", "with_recipe",
]

KINDS = ("base", "upsampler")
_SECTION = {"base": "model", "upsampler": "upsampler"}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CheckpointError(f"unknown model kind '{kind}'; use one of: {', '.join(KINDS)}")


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
PICKLE_MAGIC = b"\x80"  # a binary pickle (torch.save's legacy format starts with one)


def read_checkpoint(path) -> dict:
    """Read a foreign ``.pt`` state dict: tensors only (``weights_only=True``), floating point, finite.

    Every failure is a CheckpointError in one line that names the file and what is wrong; pickled
    code is never run, and the message never suggests running it.
    """
    import torch

    from piti_core.models.build import check_weights

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_magic(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-object files
        raise CheckpointError(f"{path}: {_load_failure(exc)}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry '{bad[0]}' is not a tensor ({type(sd[bad[0]]).__name__}); "
                              "expected a plain state dict")
    check_weights(sd, str(path))
    return sd


def _check_magic(path: Path) -> None:
    """CheckpointError unless ``path`` starts like a file torch.save writes (a zip or a binary pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    if not head:
        raise CheckpointError(f"{path}: empty file; convert the released .pt files")
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (a zip or pickle file); convert the released "
                              ".pt files")


def _load_failure(exc: Exception) -> str:
    """What a failed ``torch.load(weights_only=True)`` means, in words for the user (one line)."""
    import re

    text = str(exc)
    if "weights only load failed" in text.lower() or type(exc).__name__ == "UnpicklingError":
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"contains objects other than tensors{what}, which piti does not load (it never runs pickled "
                "code); convert a file that holds only tensors, such as the released .pt files")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = first.split(". ")[0].rstrip(".")[:160]
    return f"damaged or truncated PyTorch checkpoint ({first}); download it again"


def official_config(sds: Mapping[str, Mapping[str, Any]], task: str = "", head_channels: int = HEAD_CHANNELS,
                    encoder_heads: int = ENCODER_HEADS, image_sizes: Optional[Mapping[str, int]] = None,
                    defaults=None):
    """A PitiConfig with the sizes read from the tensors, and the condition channels.

    ``sds`` maps ``"base"`` / ``"upsampler"`` to state dicts with official PITI keys. The sizes replace
    those of ``defaults`` (a PitiConfig, default: the ``glide`` preset), whose other values (dropout,
    training, sampling, task sections) are kept. Without ``encoder.*`` keys (GLIDE files) the encoder
    section is the defaults' one with the width that ``transformer_proj`` takes, and the condition
    channels are None.
    """
    import attrs

    from piti_core.config import resolve_config

    base = defaults if defaults is not None else resolve_config(preset="glide")
    sections: dict[str, Any] = {}
    enc = cond = None
    for kind, sd in sds.items():
        _check_kind(kind)
        size = (image_sizes or {}).get(kind)
        sections[_SECTION[kind]] = infer_unet_config(sd, kind, head_channels, size)
        if "encoder.cls_token" in sd:
            e, c = infer_encoder_config(sd, encoder_heads)
        else:
            e, c = {"width": _require_proj(sd).shape[1]}, None
        if enc is not None and (e, c) != (enc, cond):
            raise CheckpointError(f"the base and upsampler condition encoders differ ({enc}, {cond} channels vs "
                                  f"{e}, {c}); a run holds one encoder configuration")
        enc, cond = e, c
    if enc is not None:
        sections["encoder"] = enc
    try:
        changes = {name: attrs.evolve(getattr(base, name), **values) for name, values in sections.items()}
        return attrs.evolve(base, task=task or base.task, **changes), cond
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's sizes do not make a valid config: {exc}") from None


def _require_proj(sd):
    if "decoder.transformer_proj.weight" not in sd:
        raise CheckpointError("checkpoint has no 'transformer_proj.weight'; it is not a text- or "
                              "task-conditioned GLIDE/PITI UNet")
    return sd["decoder.transformer_proj.weight"]


def load_official(state_dict: Mapping[str, Any], kind: str = "base", *, head_channels: int = HEAD_CHANNELS,
                  encoder_heads: int = ENCODER_HEADS, image_size: Optional[int] = None, task: str = "",
                  encoder_task=None):
    """An official PITI state dict → an eval-mode :class:`PitiModel` with the same outputs.

    Sizes (condition channels, widths, blocks, attention levels, heads = C / ``head_channels``) come
    from the tensors. The model's ``config`` attribute holds the inferred PitiConfig. ``encoder_task``
    (the installed Task ``task`` names) builds the encoder, as every run of that task does; a task with
    its own encoder architecture cannot take the official PITI encoder's weights (CheckpointError).
    """
    import torch

    from piti_core.models.build import build_base, build_upsampler, load_weights

    _check_kind(kind)
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    cfg, cond = official_config({kind: sd}, task, head_channels, encoder_heads,
                                {kind: image_size} if image_size else None)
    with torch.device("meta"):
        model = (build_base if kind == "base" else build_upsampler)(cfg, cond, task=encoder_task)
    _check_official_encoder(model.encoder, task)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ours = convert_state_dict(sd, expected, head_channels, encoder_heads, where=f"official {kind} checkpoint")
    load_weights(model, ours, assign=True)
    model.config = cfg
    return model.eval()


def _check_official_encoder(encoder, task: str) -> None:
    from piti_core.models.encoder import TaskEncoder

    if not isinstance(encoder, TaskEncoder):
        raise CheckpointError(
            f"task '{task}' builds its own encoder ({type(encoder).__name__}); official PITI checkpoints hold the "
            "PITI task encoder, which it cannot load: convert them for a task that uses the PITI encoder, or "
            "convert GLIDE's (--glide) to start this task's encoder fresh")


def load_glide(state_dict: Mapping[str, Any], kind: str, cond_channels: int, config=None, *,
               head_channels: int = HEAD_CHANNELS, image_size: Optional[int] = None, seed: int = 0,
               encoder_task=None):
    """GLIDE ``base.pt`` / ``upsample.pt`` → :class:`PitiModel` with GLIDE's decoder and a new task encoder.

    The text side is dropped; the task encoder (``config.encoder``, default: the ``glide`` preset's)
    is initialised from ``seed`` — it starts random, as in PITI's stage 1; ``encoder_task`` (a Task)
    builds it when given (:meth:`~piti_core.tasks.Task.build_encoder`). Without ``config`` the UNet
    sizes are read from the tensors. The model's ``config`` attribute holds the config used.
    """
    import torch

    from piti_core.models.build import PitiModel, build_task_encoder, load_weights
    from piti_core.models.unet import UNet

    _check_kind(kind)
    sd = glide_to_piti_keys(state_dict)
    if config is None:
        config, _ = official_config({kind: sd}, "", head_channels, image_sizes={kind: image_size} if image_size else None)
    unet_cfg = getattr(config, _SECTION[kind])
    with torch.device("meta"):
        decoder = UNet.from_config(unet_cfg, cond_width=config.encoder.width)
    expected = {"decoder." + k: v.shape for k, v in decoder.state_dict().items()}
    ours = convert_state_dict(sd, expected, head_channels, where=f"GLIDE {kind} checkpoint")
    load_weights(decoder, {k[len("decoder."):]: v for k, v in ours.items()}, assign=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_task_encoder(encoder_task, config, unet_cfg, cond_channels)
    model = PitiModel(encoder, decoder).eval()
    model.config = config
    return model


# The released code's guidance (sample.sh --sample_c 1.3, plain CFG at every step) and upsampler noise.
OFFICIAL_GUIDANCE = {"guidance": "plain", "guidance_scale": 1.3, "guidance_interval": (0.0, 1.0),
                     "upsampler_temperature": 0.997}


def with_recipe(sample, recipe: str):
    """``sample`` (a SampleConfig) with the named recipe of ``SAMPLE_RECIPES`` ("official" also brings
    the official guidance) in every value still at piti's default: a value a config set is kept."""
    import attrs

    from piti_core.config import SAMPLE_RECIPES, SampleConfig
    from piti_core.errors import UsageError

    if recipe not in SAMPLE_RECIPES:
        raise UsageError(f"unknown sampling recipe '{recipe}'; use one of: {', '.join(SAMPLE_RECIPES)}")
    values = dict(SAMPLE_RECIPES[recipe]) | (OFFICIAL_GUIDANCE if recipe == "official" else {})
    default = SampleConfig()
    return attrs.evolve(sample, **{k: v for k, v in values.items() if getattr(sample, k) == getattr(default, k)})


def convert_checkpoints(out, *, base=None, upsampler=None, task: str, config=None, glide: bool = False,
                        cond_channels: Optional[int] = None, seed: int = 0, overwrite: bool = False,
                        recipe: Optional[str] = None, callback: Optional[Callable[[dict], None]] = None) -> Path:
    """Convert official PITI (or, with ``glide``, GLIDE) ``.pt`` files into the run directory ``out``.

    ``config`` (default: the ``glide`` preset) gives every value the weights do not fix (dropout,
    training, sampling, task sections); the model sizes come from the weights.
    ``cond_channels``: with ``glide`` the channels of the new task encoder (required); otherwise, when
    given, the channels the checkpoints must take (a mismatch means the wrong task). ``callback``
    receives ``{"stage": "read"|"convert"|"write", "model": name}`` dicts ("read" once a file is read and
    checked, so a bad file fails before any status). ``recipe`` names the sampling recipe stored in the
    run (:func:`with_recipe`); default: "official" for official PITI files, piti's own ("fast") with
    ``glide``, whose runs are finetuned first.
    """
    import attrs

    from piti_core.io import OutputFolder
    from piti_core.runs import CONFIG_JSON, RUN_JSON, run_files, save_run

    if base is None and upsampler is None:
        raise CheckpointError("nothing to convert: give a base and/or an upsampler checkpoint")
    if glide and not cond_channels:
        raise CheckpointError("converting GLIDE checkpoints needs the task's condition channels (cond_channels)")
    if recipe is not None:
        with_recipe(config.sample if config is not None else _default_sample(), recipe)  # a wrong name fails first
    out = Path(out)
    paths = {k: p for k, p in (("base", base), ("upsampler", upsampler)) if p is not None}
    # --overwrite replaces an earlier run's own files only, never a user's file of the same name
    OutputFolder(out, owned=run_files(out), overwrite=overwrite, command="a piti run").claim(
        [CONFIG_JSON, RUN_JSON, *(f"{kind}.safetensors" for kind in paths)])
    notify = callback or (lambda info: None)
    encoder_task = _installed_task(task)
    models = {}
    sds = {}
    for kind, path in paths.items():
        sd = read_checkpoint(path)
        notify({"stage": "read", "model": kind})
        sds[kind] = glide_to_piti_keys(sd) if glide else sd
    if glide:
        cfg, _ = official_config(sds, task, defaults=config)
        for kind in list(sds):
            notify({"stage": "convert", "model": kind})
            models[kind] = load_glide({k[len("decoder."):]: v for k, v in sds.pop(kind).items()}, kind,
                                      cond_channels, cfg, seed=seed, encoder_task=encoder_task)
        origin = "glide"
    else:
        cfg, found = official_config(sds, task, defaults=config)
        if cond_channels and found != cond_channels:
            names = ", ".join(Path(p).name for p in paths.values())
            raise CheckpointError(
                f"{names} take {found}-channel conditions but task '{task}' gives {cond_channels} with this "
                "config; pick the task the checkpoints were trained for (*_edge.pt: sketch) and its matching "
                "options (official mask checkpoints: --set mask.encoding=rgb --set mask.palette=coco --set "
                "mask.num_classes=182)")
        cond_channels = found
        for kind in list(sds):
            notify({"stage": "convert", "model": kind})
            sizes = {"base": cfg.model.image_size, "upsampler": cfg.upsampler.image_size}
            models[kind] = load_official(sds.pop(kind), kind, task=task, image_size=sizes[kind],
                                         encoder_task=encoder_task)
        origin = "piti"
    cfg = attrs.evolve(cfg, sample=with_recipe(cfg.sample, recipe or origin_recipe(origin)))
    if encoder_task is not None:  # what the task reads from a data set is recorded, as `piti train` does
        cfg = encoder_task.run_config(cfg)
    notify({"stage": "write", "model": ",".join(models)})
    extra = {"origin": origin, "inputs": {k: str(Path(p).name) for k, p in paths.items()}}
    return save_run(out, cfg, models, task=task, cond_channels=cond_channels, source="convert", extra=extra)


def _default_sample():
    from piti_core.config import SampleConfig

    return SampleConfig()


def origin_recipe(origin: str) -> str:
    """The sampling recipe a converted run gets by default: official PITI weights ("piti") sample with
    the official recipe until piti's few-step one is validated on them; GLIDE conversions keep piti's."""
    return "official" if origin == "piti" else "fast"


def _installed_task(name: str):
    """The installed Task called ``name`` (it builds the run's encoders), or None."""
    if not name:
        return None
    from piti_core.plugins import get_plugin_manager

    return get_plugin_manager().tasks.get(name)
