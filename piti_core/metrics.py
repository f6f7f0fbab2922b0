"""The metric contract: what a metric plugin registers and what ``piti eval`` gives it.

A metric is a :class:`Metric` object registered from a plugin::

    from piti_core.hookspecs import hookimpl
    from piti_core.metrics import MeanMetric

    class Brightness(MeanMetric):
        name = "brightness"
        direction = "higher"          # which way is better: "higher" or "lower"
        needs = frozenset({"samples"})
        tasks = None                  # every task; or a tuple of task names

        def compute(self, batch, ctx):
            return float(((batch.samples + 1) / 2).mean())

    @hookimpl
    def register_metrics(register):
        register(Brightness())

``piti eval`` runs every registered metric that applies to the run's task (``--metric NAME`` picks
some), batch by batch over the validation split: :meth:`Metric.start` once, :meth:`Metric.update` per
batch, :meth:`Metric.finalize` at the end. It gives a metric only what it ``needs``:

* ``samples`` — the generated images (B, 3, H, W) in [-1, 1];
* ``real`` — the data set's images at the same size, in [-1, 1];
* ``condition`` — the encoded conditions (B, C, S, S);
* ``batch`` — the whole collated batch (the task's data fields, ``stem`` ...);
* ``features`` — Inception-v3 pool3 features (the FID network): per batch ``{"samples": (B, 2048),
  "real": (B, 2048) or None}`` and at the end :attr:`EvalContext.features` with the statistics of all
  samples and of the real images (cached between evaluations). Without the FID network (``--no-fid``,
  weights not installed, fewer than 2 images) a metric that needs them is reported unavailable
  (:meth:`Metric.unavailable`) instead of being run.

The built-in FID/KID, task alignment and toy-world oracle FID/KID are metrics of this kind
(``piti_plugins.metrics``). The pre-v2 form ``register(name, fn)`` still works (deprecated): ``fn(samples,
batch, cfg)`` returns a number or a dict of numbers per batch, averaged over the images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional

import attrs

if TYPE_CHECKING:
    import torch

NEEDS = frozenset({"samples", "real", "condition", "batch", "features"})
DIRECTIONS = ("higher", "lower")

_HIGHER = ("f1", "iou", "acc", "delta", "precision", "recall", "psnr", "ssim")
_LOWER = ("fid", "kid", "chamfer", "rmse", "abs_rel", "absrel", "deg", "err", "angle", "lpips", "mse", "mae")


def guess_direction(name: str) -> str:
    """"higher" / "lower" is better for a metric name, "" when the name does not tell (the rule for
    values whose direction nobody declared)."""
    low = name.lower()
    if any(k in low for k in _LOWER):
        return "lower"
    if any(k in low for k in _HIGHER):
        return "higher"
    return ""


def check_alignment_directions(task) -> None:
    """A PluginError naming the task unless ``Task.alignment_directions`` maps metric names to "higher" or
    "lower" (a typo would otherwise fall back to the name guess unnoticed)."""
    declared = getattr(task, "alignment_directions", None)
    if declared is None:
        return
    bad = (not isinstance(declared, Mapping) or
           next((f"{k!r}: {v!r}" for k, v in declared.items() if not isinstance(k, str) or v not in DIRECTIONS), None))
    if bad:
        from piti_core.errors import PluginError

        what = bad if isinstance(bad, str) else f"a {type(declared).__name__}"
        raise PluginError(f"task '{getattr(task, 'name', '?')}': alignment_directions has {what}; map each metric "
                          f"name to one of {', '.join(repr(d) for d in DIRECTIONS)}")


def alignment_direction(task, name: str) -> str:
    """Which way is better for the alignment value ``name`` of ``task``: what the task declares in
    ``Task.alignment_directions``, else :func:`guess_direction`."""
    declared = getattr(task, "alignment_directions", None) or {}
    better = declared.get(name) if isinstance(declared, Mapping) else None
    return better if better in DIRECTIONS else guess_direction(name)


class MetricSkipped(Exception):
    """Raised by :meth:`Metric.start` when the metric does not apply to this evaluation (the toy-world
    oracle on another data set); the message, when not empty, becomes one of the evaluation's notes."""


@attrs.frozen
class MetricValue:
    """One reported value. ``better`` (default: the metric's direction), ``label`` (default: the
    value's name) and ``note`` go to ``metric_info``, with ``info``'s items (e.g. ``{"real": 0.8}``,
    the same metric on the real images)."""

    value: Optional[float]
    better: Optional[str] = None
    label: Optional[str] = None
    note: str = ""
    info: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class FeatureSet:
    """Inception statistics (:class:`piti_core.eval.fid.FeatureStats`, features kept) of all samples and
    of the real images."""

    samples: Any
    real: Any


@attrs.frozen
class EvalContext:
    """What one evaluation tells every metric. ``features`` is set for :meth:`Metric.finalize` only."""

    task: Any  # piti_core.tasks.Task
    cfg: Any  # PitiConfig of the run, with the evaluation's data and sample settings
    n: int  # images evaluated
    resolution: int  # of the samples and real images
    device: Any  # torch.device
    toy_world: bool
    features: Optional[FeatureSet] = None


@attrs.frozen
class MetricBatch:
    """One batch as a metric sees it: what it does not declare in ``needs`` is None."""

    samples: Optional["torch.Tensor"] = None
    real: Optional["torch.Tensor"] = None
    condition: Optional["torch.Tensor"] = None
    batch: Optional[Mapping[str, Any]] = None
    features: Optional[Mapping[str, Any]] = None

    @property
    def size(self) -> int:
        for x in (self.samples, self.real, self.condition):
            if x is not None:
                return int(x.shape[0])
        if self.features is not None:
            return int(self.features["samples"].shape[0])
        return len(self.batch["stem"]) if self.batch is not None and "stem" in self.batch else 0


class Metric:
    """Base class of evaluation metrics. Subclasses set the class attributes and :meth:`finalize`
    (and usually :meth:`start` / :meth:`update`).

    ``name`` (lower-case letters, digits, ``-``, ``_``) is what ``piti eval --metric`` selects;
    ``direction`` says which way is better; ``needs`` is a subset of :data:`NEEDS`; ``tasks`` the task
    names it applies to (None: every task); ``outputs`` the names of the values it reports when they
    are known in advance (default: ``name`` alone), used when it cannot run.
    """

    name: ClassVar[str] = ""
    direction: ClassVar[str] = ""
    needs: ClassVar[frozenset] = frozenset({"samples"})
    tasks: ClassVar[Optional[tuple]] = None
    label: ClassVar[str] = ""
    outputs: ClassVar[tuple] = ()

    def applies_to(self, task_name: str) -> bool:
        return self.tasks is None or task_name in self.tasks

    def start(self, ctx: EvalContext) -> Any:
        """The state of one evaluation (default None). Raise :class:`MetricSkipped` to sit it out."""
        return None

    def update(self, state: Any, batch: MetricBatch, ctx: EvalContext) -> Any:
        """Fold one batch into ``state``; returns the new state (default: unchanged)."""
        return state

    def finalize(self, state: Any, ctx: EvalContext):
        """The result: a number (or None), a :class:`MetricValue`, or a dict name -> either of them."""
        raise NotImplementedError(f"metric '{self.name}' must define finalize()")

    def unavailable(self, reason: str) -> dict[str, MetricValue]:
        """What is reported when a need cannot be met (``reason``: why): None for every output."""
        return {out: MetricValue(None, note=reason) for out in (self.outputs or (self.name,))}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


class MeanMetric(Metric):
    """A metric computed per batch and averaged over the images: subclasses define :meth:`compute`."""

    def compute(self, batch: MetricBatch, ctx: EvalContext):
        """A number, or a dict name -> number, for one batch."""
        raise NotImplementedError(f"metric '{self.name}' must define compute()")

    def start(self, ctx: EvalContext) -> dict:
        return {"sums": {}, "count": 0}

    def update(self, state: dict, batch: MetricBatch, ctx: EvalContext) -> dict:
        values = self.compute(batch, ctx)
        values = values if isinstance(values, Mapping) else {self.name: values}
        size = batch.size
        for key, value in values.items():
            state["sums"][key] = state["sums"].get(key, 0.0) + float(value) * size
        state["count"] += size
        return state

    def finalize(self, state: dict, ctx: EvalContext) -> dict:
        count = state["count"] or 1
        return {key: total / count for key, total in state["sums"].items()}


class LegacyMetric(MeanMetric):
    """A pre-v2 ``register(name, fn)`` metric: ``fn(samples, batch, cfg)`` per batch, averaged; its
    direction is guessed from its name. A failure is reported on the metric, not raised."""

    needs = frozenset({"samples", "batch"})

    def __init__(self, name: str, fn: Callable):
        self._name, self.fn = name, fn

    @property  # type: ignore[override]
    def name(self) -> str:
        return self._name

    @property  # type: ignore[override]
    def direction(self) -> str:
        return guess_direction(self._name)

    def compute(self, batch: MetricBatch, ctx: EvalContext):
        return self.fn(batch.samples, batch.batch, ctx.cfg)

    def update(self, state: dict, batch: MetricBatch, ctx: EvalContext) -> dict:
        if state.get("error"):
            return state
        try:
            return super().update(state, batch, ctx)
        except Exception as exc:  # its calling convention was never checked: it must not stop an evaluation
            state["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return state

    def finalize(self, state: dict, ctx: EvalContext):
        if state.get("error"):
            return MetricValue(None, note=f"failed: {state['error']}")
        return super().finalize(state, ctx)


def check_metric(metric) -> None:
    """PluginError unless ``metric`` is a :class:`Metric` with a valid direction, needs and tasks."""
    from piti_core.errors import PluginError

    if not isinstance(metric, Metric):
        raise PluginError(f"register_metrics got {type(metric).__name__}, expected a piti_core.metrics.Metric "
                          "(or the deprecated register(name, fn))")
    name = metric.name
    if metric.direction not in DIRECTIONS:
        raise PluginError(f"metric '{name}': direction must be 'higher' or 'lower', got {metric.direction!r}")
    needs = metric.needs
    if isinstance(needs, str) or not set(needs) <= NEEDS:
        raise PluginError(f"metric '{name}': needs must be a subset of {', '.join(sorted(NEEDS))}, got {needs!r}")
    tasks = metric.tasks
    if tasks is not None and (isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks)):
        raise PluginError(f"metric '{name}': tasks must be a tuple of task names or None, got {tasks!r}")


def legacy_metric(name: str, fn: Callable) -> LegacyMetric:
    """Wrap a pre-v2 ``register(name, fn)`` metric, with a DeprecationWarning."""
    import warnings

    from piti_core.errors import PluginError

    if not callable(fn):
        raise PluginError(f"metric '{name}' is not callable")
    warnings.warn(f"metric '{name}': register(name, fn) is deprecated; register a piti_core.metrics.Metric "
                  "(docs/plugins.md, \"Metrics\")", DeprecationWarning, stacklevel=3)
    return LegacyMetric(name, fn)
