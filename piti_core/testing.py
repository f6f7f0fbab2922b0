"""A pytest plugin for plugin authors (and piti's own tests).

Use it from a plugin's test suite::

    pytest_plugins = ["piti_core.testing"]

    def test_my_task(piti_config):
        assert_task_contract(MyTask(), piti_config)

    def test_my_sampler():
        assert_sampler_contract(sample_mine)

    def test_loading(fake_entry_points, plugin_host_factory):
        fake_entry_points.add("foo", "piti_task_foo")
        host = plugin_host_factory()
        assert "foo" in host.tasks

Fixtures:
    piti_host            a fresh, empty :class:`~piti_core.plugins.PluginHost` (no entry points loaded)
    plugin_host_factory  builds a fresh host that loads (possibly faked) entry points
    fake_entry_points    replace the installed ``piti`` entry points with fake ones
    piti_config          the ``tiny`` preset config
    clean_plugin_env     clears PITI_* plugin environment variables and the cached host
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from piti_core import plugins as _plugins


class _FakeDist:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version


class FakeEntryPoint:
    """Duck-types :class:`importlib.metadata.EntryPoint` (name, value, dist, load())."""

    def __init__(self, name: str, target: Any, dist: str | None, version: str):
        self.name = name
        self.target = target
        self.value = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        self.dist = _FakeDist(dist, version) if dist else None

    def load(self):
        if not isinstance(self.target, str):
            return self.target
        import importlib

        module, _, attr = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
        return obj


class FakeEntryPoints:
    """Controls what :func:`piti_core.plugins.entry_points_for_group` returns."""

    def __init__(self, keep_installed: bool):
        self.keep_installed = keep_installed
        self.added: list[FakeEntryPoint] = []

    def add(self, name: str, target: Any, dist: str | None = "piti-test-plugin", version: str = "0.0.1"):
        """Add an entry point; ``target`` is ``"module[:attr]"`` or the plugin object itself."""
        self.added.append(FakeEntryPoint(name, target, dist, version))
        return self

    def __call__(self, group: str = _plugins.GROUP) -> list:
        base = _ORIGINAL_ENTRY_POINTS(group) if self.keep_installed else []
        return list(base) + list(self.added)


_ORIGINAL_ENTRY_POINTS = _plugins.entry_points_for_group


def make_plugin_module(name: str, source: str) -> types.ModuleType:
    """Create an importable in-memory module from source (for fake plugins in tests)."""
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    sys.modules[name] = module
    return module


@pytest.fixture
def clean_plugin_env(monkeypatch):
    for var in ("PITI_DISABLE_PLUGINS", "PITI_LOAD_PLUGINS", "PITI_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    _plugins.reset_plugin_manager()
    yield monkeypatch
    _plugins.reset_plugin_manager()


@pytest.fixture
def fake_entry_points(clean_plugin_env):
    """Only the entry points added with ``.add()`` are seen (``.keep_installed = True`` keeps real ones)."""
    fake = FakeEntryPoints(keep_installed=False)
    clean_plugin_env.setattr(_plugins, "entry_points_for_group", fake)
    return fake


@pytest.fixture
def piti_host(clean_plugin_env):
    return _plugins.PluginHost()


@pytest.fixture
def plugin_host_factory(clean_plugin_env):
    def make() -> _plugins.PluginHost:
        host = _plugins.PluginHost()
        host.load_entry_points()
        return host

    return make


def task_config(task=None, *overrides: str, preset: str = "tiny"):
    """A resolved config for tests: ``preset`` with ``overrides`` (``"tasks.NAME.key=value"``, ``"train.lr=1e-4"``),
    knowing ``task``'s own section (a Task instance) besides the installed tasks'."""
    from piti_core.config import resolve_config
    from piti_core.plugins import get_plugin_manager

    sections = dict(get_plugin_manager().task_sections())
    if task is not None:
        sections[task.name] = getattr(task, "config_class", None)
    return resolve_config(preset=preset, overrides=list(overrides), extra_sections=sections)


@pytest.fixture
def piti_config():
    return task_config()


def assert_task_contract(task, cfg=None, batch_size: int = 2) -> None:
    """Check that ``task`` honours the :class:`~piti_core.tasks.Task` contract on CPU, tiny shapes.

    Builds the task's encoder as piti does (for the base and the upsampler decoder) and one batch of
    conditions and checks names, shapes, dtypes, value ranges, the null condition, and that the encoder
    runs on the batch and returns what the decoder reads (a PluginError naming the task if not).
    """
    import torch

    from piti_core.config import resolve_config
    from piti_core.tasks import ConditionSpec, Task

    assert isinstance(task, Task), f"{task!r} is not a piti_core.tasks.Task"
    assert _plugins.NAME_RE.match(task.name or ""), f"bad task name {task.name!r}"
    assert task.description, f"task '{task.name}' has no description"
    if cfg is None:
        sections = {task.name: task.config_class} if task.config_class else {}
        cfg = resolve_config(preset="tiny", extra_sections=sections)
    spec = task.condition_spec(cfg)
    assert isinstance(spec, ConditionSpec), "condition_spec() must return a ConditionSpec"
    s = cfg.encoder.cond_size
    cond = task.example_condition(cfg, batch_size, torch.Generator().manual_seed(0))
    assert cond.shape == (batch_size, spec.channels, s, s), (
        f"task '{task.name}': condition shape {tuple(cond.shape)} != {(batch_size, spec.channels, s, s)}")
    assert cond.dtype == getattr(torch, spec.dtype), f"condition dtype {cond.dtype} != {spec.dtype}"
    assert torch.isfinite(cond).all(), "condition has NaN/inf"
    lo, hi = spec.value_range
    assert cond.min() >= lo - 1e-5 and cond.max() <= hi + 1e-5, (
        f"task '{task.name}': condition values [{cond.min():.3f}, {cond.max():.3f}] outside {spec.value_range}")
    null = task.null_condition(cond)
    assert null.shape == cond.shape, "null_condition() must keep the shape"
    vis = task.visualize(cond[0], cfg)
    assert vis.shape == (3, s, s) and vis.min() >= 0 and vis.max() <= 1, "visualize() must give (3,S,S) in [0,1]"
    from piti_core.models.build import build_task_encoder, check_encoder
    from piti_core.models.encoder import TaskEncoder

    for decoder in (cfg.model, cfg.upsampler):  # what piti builds: PluginError naming the task if unreadable
        encoder = build_task_encoder(task, cfg, decoder, spec.channels)
        check_encoder(encoder, task, cfg, decoder, spec.channels, batch_size)
    encoder = encoder.eval()
    with torch.no_grad():
        tokens, pooled = encoder(cond)[:2]
    n = (s // 16) ** 2 if isinstance(encoder, TaskEncoder) else tokens.shape[1]
    assert tokens.shape == (batch_size, n, cfg.encoder.width), f"encoder tokens shape {tuple(tokens.shape)}"
    assert pooled.shape == (batch_size, cfg.encoder.width), f"encoder pooled shape {tuple(pooled.shape)}"
    assert torch.isfinite(tokens).all() and torch.isfinite(pooled).all(), "encoder output has NaN/inf"
    from piti_core.demo.app import input_kind
    from piti_core.generate import input_suffixes

    from piti_core.metrics import check_alignment_directions

    check_alignment_directions(task)
    input_suffixes(task, cfg)  # the files `piti sample --input DIR` picks: PluginError naming the task if unusable
    input_kind(task, cfg, spec)  # the demo's input widget: likewise


def gaussian_model_fn(mu: float = 0.2, s: float = 0.3, learned: bool = True, v: float = 0.3):
    """A tiny analytic model function for sampler tests: the exact ε-predictor for data x_0 ~ N(mu, s²)
    elementwise under the T=1000 cosine schedule (``[ε | v]`` when ``learned``, else ``ε``)."""
    import torch

    from piti_core.diffusion.respace import build_schedule

    ac_all = build_schedule("cosine", 1000).alphas_cumprod

    def model_fn(x, t):
        ac = ac_all[t.round().long().cpu()].to(x).reshape(-1, *([1] * (x.ndim - 1)))
        x0 = mu + ac.sqrt() * s**2 / (ac * s**2 + 1 - ac) * (x - ac.sqrt() * mu)
        eps = (x - ac.sqrt() * x0) / (1 - ac).sqrt()
        return torch.cat([eps, torch.full_like(eps, v)], dim=1) if learned else eps

    return model_fn


def assert_sampler_contract(fn, steps: str = "10", **options) -> None:
    """Check that ``fn`` honours the sampler contract of :mod:`piti_core.diffusion.samplers` on CPU, tiny shapes.

    Runs ``fn(model_fn, x, schedule, generator=..., callback=..., **options)`` on the analytic model of
    :func:`gaussian_model_fn` (both output forms, ``[ε | v]`` and ``ε``) over a ``steps``-step cosine
    schedule and checks: the result has x's shape and dtype, is finite and follows the data (its mean and
    spread near the model's); ``x`` is not changed in place; the same generator seed gives the same result
    whatever the global random state (all noise comes from ``generator``); ``callback`` is called once per
    step with ``i`` (0, 1, ...), ``total``, ``t``, ``x`` and ``x0``.
    """
    import torch

    from piti_core.diffusion.respace import build_schedule

    schedule = build_schedule("cosine", 1000, steps)
    mu, s = 0.2, 0.3
    shape = (2, 3, 16, 16)
    for learned in (True, False):
        model_fn = gaussian_model_fn(mu, s, learned=learned)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        before = x.clone()
        runs = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            infos: list = []
            out = fn(model_fn, x, schedule, generator=torch.Generator().manual_seed(0), callback=infos.append,
                     **options)
            runs.append((out, infos))
        out, infos = runs[0]
        form = "[eps | v]" if learned else "eps"
        assert isinstance(out, torch.Tensor), f"sampler returned {type(out).__name__}, expected a tensor"
        assert out.shape == shape and out.dtype == x.dtype, (
            f"sampler ({form} model) returned {tuple(out.shape)} {out.dtype}, expected {shape} {x.dtype}")
        assert torch.isfinite(out).all(), f"sampler ({form} model) returned NaN/inf"
        assert torch.equal(x, before), "sampler changed its input x in place"
        assert torch.equal(out, runs[1][0]), (
            "same generator seed, different result: the sampler draws noise outside `generator` "
            "(use torch.randn(..., generator=generator))")
        mean, std = out.mean().item(), out.std().item()
        assert abs(mean - mu) < 0.15 and 0.5 * s < std < 2 * s, (
            f"sampler ({form} model) does not follow the model: samples have mean {mean:.3f}, std {std:.3f}; "
            f"the data has mean {mu}, std {s}")
        _check_callback(infos)


def _check_callback(infos: list) -> None:
    assert infos, "callback was never called"
    for i, info in enumerate(infos):
        assert isinstance(info, dict), f"callback got {type(info).__name__}, expected a dict"
        missing = {"i", "total", "t", "x", "x0"} - set(info)
        assert not missing, f"callback info lacks {', '.join(sorted(missing))}"
        assert info["i"] == i, f"callback step numbers must count 0, 1, ...: got {info['i']} as call {i}"
        assert info["total"] == len(infos), f"callback total {info['total']} != {len(infos)} calls"


def assert_field_contract(field, good_file=None, bad_file=None, size: int = 16) -> None:
    """Check a :class:`~piti_core.data.fields.Field` on CPU: its declaration, random values, resampling
    to ``size`` without clamping (unless it declares a clamp), and, when given, that ``good_file``
    reads to the declared channels and that ``bad_file`` is refused with a one-line DataError naming it.
    """
    import torch

    from piti_core.data.fields import RESAMPLING, Field
    from piti_core.data.transforms import resize_field
    from piti_core.errors import DataError

    assert isinstance(field, Field), f"{field!r} is not a piti_core.contract.Field"
    assert field.resample in RESAMPLING and field.suffixes, f"field '{field.name}': bad resample or suffixes"
    values = field.synthetic_values(size * 2, torch.Generator().manual_seed(0))
    assert field.name in values, f"field '{field.name}': synthetic values lack '{field.name}'"
    x = values[field.name]
    x = x[None] if x.ndim == 2 else x
    assert x.shape[-2:] == (size * 2, size * 2), f"field '{field.name}': synthetic shape {tuple(x.shape)}"
    if field.channels is not None:
        assert x.shape[0] == field.channels, f"field '{field.name}': {x.shape[0]} channels, declares {field.channels}"
    out = resize_field(field.name, x * 7 - 3 if x.is_floating_point() else x, size, field.resampling(field.name),
                       field.clamp)
    assert out.shape[-2:] == (size, size), f"field '{field.name}': resampled to {tuple(out.shape)}"
    if field.clamp is None and x.is_floating_point() and float(x.max()) > 0.5:
        assert float(out.min()) < 0.0 or float(out.max()) > 1.0, f"field '{field.name}': resampling clamped its values"
    if good_file is not None:
        arrays = field.load(good_file)
        main = arrays[field.name]
        c = 1 if main.ndim == 2 else main.shape[0]
        assert field.channels is None or c == field.channels, f"{good_file}: {c} channels, declares {field.channels}"
        w, h = field.probe_size(good_file)
        assert (h, w) == tuple(main.shape[-2:]), f"{good_file}: probe_size {(w, h)} != the array's {main.shape[-2:]}"
    if bad_file is not None:
        try:
            field.load(bad_file)
        except DataError as exc:
            message = str(exc)
            assert "\n" not in message and str(bad_file) in message, f"not one line naming the file: {message}"
        else:
            raise AssertionError(f"field '{field.name}' read the bad file {bad_file} without a DataError")
