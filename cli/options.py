"""Options shared by commands that take a config: --preset, --config, --set, --print-config."""

from __future__ import annotations

import functools

import click

from piti_core.config import PRESETS, config_to_json, resolve_config


def config_options(func=None, *, default_preset: str | None = None):
    """Add the config options; the command receives ``config`` (a resolved PitiConfig).

    ``default_preset`` is used when neither --preset nor a config file names one (training
    commands default to ``tiny`` so they run on a laptop CPU; pass --preset glide for the real sizes).

    With ``--print-config`` the resolved config is printed as JSON on stdout and the command stops.
    Task sections (``[tasks.sketch]``, ``--set tasks.sketch.threshold=0.3``; today's ``[sketch]`` and
    ``--set sketch.threshold=0.3`` are still read) come from the registered task plugins.
    """

    if func is None:
        return functools.partial(config_options, default_preset=default_preset)

    @click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
                  help=f"Named base config (default: {default_preset or 'glide'}, or the preset of --config).")
    @click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False),
                  help="TOML config file(s); later ones win.")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override one value, e.g. --set train.lr=1e-4 (repeatable).")
    @click.option("--print-config", is_flag=True, help="Print the resolved config as JSON and exit.")
    @functools.wraps(func)
    def wrapper(*args, preset, config_files, overrides, print_config, **kwargs):
        from piti_core.plugins import get_plugin_manager

        sections = get_plugin_manager().task_sections()
        # an explicit --preset beats a config file's; default_preset only fills in when neither names one
        overrides = ([f"preset={preset}"] if preset else []) + list(overrides)
        cfg = resolve_config(preset=default_preset, files=config_files, overrides=overrides,
                             extra_sections=sections)
        task = kwargs.get("task")
        if task:
            get_plugin_manager().task(task)  # validate the name early, listing the valid ones
        if print_config:
            click.echo(config_to_json(cfg))
            return None
        return func(*args, config=cfg, **kwargs)

    return wrapper


def task_option(required: bool = True):
    """``--task NAME``, validated against the task registry (a wrong name lists the valid ones)."""

    def callback(ctx, param, value):
        if value is None:
            return value
        from piti_core.plugins import get_plugin_manager

        get_plugin_manager().task(value)
        return value

    return click.option("--task", required=required, callback=callback, help="Task name (see `piti tasks`).")


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


class FiniteFloat(click.ParamType):
    """A float that is finite (``inf`` and ``nan`` are refused) and at least ``min`` when given."""

    name = "float"

    def __init__(self, min: float | None = None):
        self.min = min

    def convert(self, value, param, ctx):
        import math

        if isinstance(value, float) and math.isfinite(value) and (self.min is None or value >= self.min):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"{value!r} is below {self.min:g}", param, ctx)
        return number


def _device(ctx, param, value):
    """A device this machine has (checked before any model is loaded); None keeps the default."""
    if value is None:
        return None
    from piti_core.errors import UsageError
    from piti_core.precision import resolve_device

    try:
        return str(resolve_device(value))
    except UsageError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def device_option(default: str | None = None):
    """``--device``: cpu, cuda, cuda:N (default: cuda when available), validated up front."""
    return click.option("--device", default=default, callback=_device,
                        show_default=default is not None,
                        help="cpu, cuda, cuda:1 ... (default: cuda if available)." if default is None
                        else "Torch device.")


def seed_option(default: int | None = None, help: str = "Random seed (default 0).", name: str = "--seed"):
    """A seed option: an integer in [0, 2**64 - 1] (what torch's generators take)."""
    return click.option(name, type=click.IntRange(0, MAX_SEED), default=default,
                        show_default=default is not None, help=help)


SAMPLE_KEYS = ("sampler", "steps", "upsampler_sampler", "upsampler_steps", "upsampler_start", "guidance",
               "guidance_scale", "guidance_interval")


def _guidance_interval(ctx, param, value):
    if value is None:
        return None
    from piti_core.config import _interval

    try:
        return _interval(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace("guidance_interval", "it"), param=param) from None


def _sampler_name(ctx, param, value):
    """A registered sampler's name (built-in or a plugin's), checked before any model is loaded."""
    if value is None:
        return None
    from piti_core.plugins import get_plugin_manager

    names = sorted(get_plugin_manager().samplers)
    if value not in names:
        raise click.BadParameter(f"{value!r} is not a registered sampler; choose one of {', '.join(names)}",
                                 param=param)
    return value


def recipe_option(help: str):
    """``--recipe NAME``: a named set of sampling settings (``piti_core.config.SAMPLE_RECIPES``)."""
    from piti_core.config import SAMPLE_RECIPES

    return click.option("--recipe", type=click.Choice(sorted(SAMPLE_RECIPES)), default=None, help=help)


def _sample_overrides(ctx, param, value):
    """``--set sample.KEY=VALUE`` items as (key, value) pairs; any other section is a usage error."""
    from piti_core.config import parse_override
    from piti_core.errors import ConfigError

    pairs = []
    for text in value:
        try:
            parts, parsed = parse_override(text)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param=param) from None
        if len(parts) != 2 or parts[0] != "sample":
            raise click.BadParameter(f"{text!r}: only sample.* keys can be changed when sampling a run "
                                     "(e.g. --set sample.steps=10)", param=param)
        pairs.append((parts[1], parsed))
    return tuple(pairs)


def sampling_options(func):
    """--set sample.KEY=VALUE, --recipe, --fast, --sampler, --steps, --upsampler-sampler, --upsampler-steps,
    --upsampler-start, --guidance, --guidance-scale: changes to the run's ``sample`` section (None = keep the
    run's value); see :func:`sample_settings`."""
    options = [
        click.option("--set", "sample_overrides", multiple=True, metavar="sample.KEY=VALUE",
                     callback=_sample_overrides,
                     help="Change one value of the run's sample section for this call, e.g. --set sample.steps=10 "
                          "(repeatable); --steps, --seed and the other explicit options win over it."),
        recipe_option("Sampling recipe: official (DDPM 250 + fast27 from pure noise) or fast (piti's few-step "
                      "defaults); sets the samplers, steps and upsampler start, which the options below "
                      "override (default: the run's sample section)."),
        click.option("--fast", is_flag=True, help="The same as --recipe fast."),
        click.option("--sampler", default=None, callback=_sampler_name, metavar="NAME",
                     help="Base sampler: ddpm, ddim, dpmpp, dpmpp-sde or a plugin's (`piti plugins`; "
                          "default: the run's sample.sampler)."),
        click.option("--steps", default=None,
                     help="Base respacing: 250, 50, ddim25, ... (that many steps; default: the run's sample.steps)."),
        click.option("--upsampler-sampler", default=None, callback=_sampler_name, metavar="NAME",
                     help="Upsampler sampler, as --sampler (default: the run's sample.upsampler_sampler)."),
        click.option("--upsampler-steps", default=None,
                     help="Upsampler respacing of the full T: 12, fast27, ...; from --upsampler-start below 1 only "
                          "its steps below start·T run (12 from 0.4 runs 5; settings.json's steps_run says how "
                          "many) (default: the run's sample.upsampler_steps)."),
        click.option("--upsampler-start", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Start the upsampler at this fraction of T from its noised low-res input "
                          "(1 = pure noise, official; default: the run's sample.upsampler_start)."),
        click.option("--guidance", type=click.Choice(["plain", "normalized", "none"]), default=None,
                     help="Classifier-free guidance of the base model (default: the run's)."),
        click.option("--guidance-scale", type=FiniteFloat(min=0.0), default=None,
                     help="Official scale s ≥ 0 (1 = conditional only)."),
        click.option("--guidance-interval", default=None, metavar="LO,HI", callback=_guidance_interval,
                     help="Guide only at steps with LO <= t/T <= HI, the conditional row alone elsewhere "
                          "(default: the run's sample.guidance_interval, 0,1 = every step)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def sample_settings(base, kwargs: dict, **more):
    """The run's sample section ``base`` with ``--set sample.*`` applied, then the recipe and the explicit
    sampling options (they win); a bad value is a ConfigError naming the key."""
    import attrs

    from piti_core.config import SampleConfig, _build_section

    overrides = dict(kwargs.get("sample_overrides") or ())
    section = _build_section(SampleConfig, base, overrides, "sample") if overrides else base
    return attrs.evolve(section, **sample_changes(kwargs, **more))


def sample_changes(kwargs: dict, **more) -> dict:
    """The non-None sampling options (and ``more``) as keyword changes for ``attrs.evolve(cfg.sample, ...)``,
    over the values of the chosen recipe (``--recipe`` / ``--fast``; explicit options win)."""
    values = {k: kwargs[k] for k in SAMPLE_KEYS} | more
    explicit = {k: v for k, v in values.items() if v is not None}
    return _recipe_values(kwargs.get("recipe"), kwargs.get("fast", False)) | explicit


def _recipe_values(recipe: str | None, fast: bool) -> dict:
    """The settings of ``--recipe`` / ``--fast`` (none when neither is given)."""
    from piti_core.config import SAMPLE_RECIPES
    from piti_core.errors import UsageError

    if fast and recipe not in (None, "fast"):
        raise UsageError(f"--fast and --recipe {recipe} ask for different recipes; give one of them")
    name = "fast" if fast else recipe
    return dict(SAMPLE_RECIPES[name]) if name else {}
