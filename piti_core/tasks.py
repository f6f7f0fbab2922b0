"""The contract a task plugin implements.

A *task* turns one kind of condition (a label map, a sketch, a depth map ...) into the tensor that
the PITI task encoder reads. Everything else — the encoder architecture, the diffusion model, the
trainer, the samplers — is shared. A task subclasses :class:`Task` and is registered from a plugin::

    from piti_core.hookspecs import hookimpl

    @hookimpl
    def register_tasks(register):
        register(MyTask())

What a task defines:

* ``name``, ``description``, ``fields`` (the data-set fields it reads: :class:`~piti_core.data.fields.Field`
  objects, or names — ``labels``, ``edges``, ``depth``, ``normals``, ``image``; ``sources``, a tuple of
  names, still works) and optionally ``config_class`` (an attrs class: its own ``[name]`` config
  section, e.g. ``--set sketch.source=canny``);
* :meth:`condition_spec` — channels, dtype, value range, classes/palette;
* :meth:`encode` — data-set fields of one sample -> condition tensor ``(C, S, S)``;
* :meth:`preprocess` — a user's condition file -> condition batch ``(1, C, S, S)``;
* optionally :meth:`alignment` (how well samples follow the condition), :meth:`visualize`,
  :meth:`null_condition`, :meth:`build_encoder`, :meth:`synthetic_sample`, :meth:`input_suffixes` (the
  files ``piti sample --input DIR`` takes), :meth:`input_kind` (the demo's input widget).

The data loaders, the encoder and the null condition come with working defaults, so a new task
usually writes ``condition_spec``, ``encode`` and ``preprocess`` only. See docs/plugins.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import attrs
from attrs import field, frozen

if TYPE_CHECKING:  # keep `import piti_core.tasks` free of torch
    import torch
    from torch import nn

    from piti_core.config import PitiConfig

@frozen
class ConditionSpec:
    """What the encoder's input tensor looks like."""

    channels: int = field(validator=attrs.validators.gt(0))
    value_range: tuple[float, float] = (-1.0, 1.0)
    dtype: str = "float32"
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_index: int | None = None

    def __attrs_post_init__(self):
        lo, hi = self.value_range
        if not lo < hi:
            raise ValueError(f"value_range must be (low, high) with low < high, got {self.value_range}")


class Task:
    """Base class of every task plugin. Subclasses set the class attributes and two or three methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()
    # the data-set fields it reads: piti_core.data.fields.Field objects (a task's own kind of data) or
    # names of fields (built-in: labels, edges, depth, normals, image); empty: ``sources`` (names)
    fields: ClassVar[tuple[Any, ...]] = ()
    config_class: ClassVar[type | None] = None
    # which way is better for each value :meth:`alignment` returns ("higher" | "lower"); values not
    # named here get a guess from their name (``piti_core.metrics.guess_direction``)
    alignment_directions: ClassVar[Mapping[str, str]] = {}

    # ------------------------------------------------------------------ required
    def condition_spec(self, cfg: "PitiConfig") -> ConditionSpec:
        raise NotImplementedError(f"task '{self.name}' must define condition_spec()")

    def encode(self, sample: Mapping[str, Any], cfg: "PitiConfig") -> "torch.Tensor":
        """Data-set fields of ONE sample (at ``cfg.encoder.cond_size``) -> condition ``(C, S, S)``."""
        raise NotImplementedError(f"task '{self.name}' must define encode()")

    def preprocess(self, source: "str | Path | Any", cfg: "PitiConfig") -> "torch.Tensor":
        """A user's condition file (path or PIL image) -> condition batch ``(1, C, S, S)``.

        Raise :class:`piti_core.errors.DataError` naming the file when it cannot be used. What it returns
        is checked against :meth:`condition_spec` (:meth:`check_preprocessed`) before piti samples from it.
        """
        raise NotImplementedError(f"task '{self.name}' must define preprocess()")

    # ------------------------------------------------------------------ defaults
    def options(self, cfg: "PitiConfig"):
        """This task's validated config section (an instance of ``config_class``) or None."""
        opts = cfg.task_options(self.name)
        if opts is None and self.config_class is not None:
            opts = self.config_class()
        return opts

    def run_config(self, cfg: "PitiConfig") -> "PitiConfig":
        """``cfg`` with whatever this task reads from the training data set written into its own section,
        so the run's config.json is enough to sample, evaluate and resume without that data set (the
        mask task records its classes, colours and label mapping). Called when a run starts; must be
        idempotent. Default: ``cfg`` unchanged."""
        return cfg

    def null_condition(self, cond: "torch.Tensor") -> "torch.Tensor":
        """The "no condition" input for classifier-free guidance: all ones, as the official code."""
        import torch

        return torch.ones_like(cond)

    def build_encoder(self, cfg: "PitiConfig", decoder=None) -> "nn.Module":
        """The encoder of this task's conditions for ``decoder`` (``cfg.model`` — the default — or
        ``cfg.upsampler``): the PITI task encoder sized by ``cfg.encoder``.

        Override it to bring another architecture. piti builds every task model through it (training,
        sampling, eval, convert, the memory preflight) and checks its output once: ``(tokens (B, N,
        cfg.encoder.width), pooled (B, cfg.encoder.width)[, hints...])``. Size it from ``cfg`` only (its
        ``encoder`` section and this task's own options), so a run's config.json rebuilds it; its
        weights are saved with the run. An override that takes only ``cfg`` builds the encoder of both
        decoders.
        """
        from piti_core.models.encoder import TaskEncoder

        decoder = decoder if decoder is not None else cfg.model
        return TaskEncoder.from_config(cfg.encoder, self.condition_spec(cfg).channels,
                                       checkpointing=decoder.checkpointing, decoder=decoder)

    def data_fields(self) -> tuple:
        """The :class:`~piti_core.data.fields.Field` objects this task reads: ``fields``, else ``sources``
        (names of built-in or declared fields resolve to those Field objects)."""
        from piti_core.data.fields import resolve_fields
        from piti_core.errors import PluginError

        try:
            return resolve_fields(self.fields or self.sources)
        except ValueError as exc:  # the plugin's declaration, not the user's data
            raise PluginError(f"task '{self.name}' declares fields piti cannot use: {exc}; declare a task's own "
                              "field with a Field object (see docs/plugins.md, 'Data fields')") from None

    def build_dataset(self, cfg: "PitiConfig", split: str, *, image_sizes=None, train: bool = True, callback=None):
        """The data set of ``split`` with the encoded condition under ``"cond"``.

        :meth:`encode` receives every field of :meth:`data_fields` at ``cfg.encoder.cond_size`` — the
        photo too, when the task lists ``image`` (the sample's own ``"image"`` stays the training
        target at the model's size). ``callback`` receives the data layer's events (toy-world
        generation, skipped pairs, cache building) for the caller to display.
        """
        from piti_core.data.dataset import build_dataset

        sizes = image_sizes or (cfg.model.image_size,)
        fields = self.data_fields()

        def add_condition(sample):
            view = dict(sample)
            if "cond_image" in sample:  # the photo at the condition size, for encode only
                view["image"] = sample.pop("cond_image")
                del view["cond_image"]
            sample["cond"] = self.encode(view, cfg)
            return sample

        return build_dataset(
            cfg.data, split, fields=fields, image_sizes=sizes, cond_size=cfg.encoder.cond_size,
            train=train, transform=add_condition, callback=callback,
        )

    def synthetic_sample(self, cfg: "PitiConfig", generator: "torch.Generator") -> dict[str, Any]:
        """Random but valid data-set fields at the condition size (contract tests, benchmarks): each
        field's own :meth:`~piti_core.data.fields.Field.synthetic_values`."""
        s = cfg.encoder.cond_size
        spec = self.condition_spec(cfg)
        out: dict[str, Any] = {}
        for f in self.data_fields():
            out.update(f.synthetic_values(s, generator, spec))
        return out

    def example_condition(self, cfg: "PitiConfig", batch_size: int = 2, generator=None) -> "torch.Tensor":
        """A batch of valid conditions ``(B, C, S, S)`` built from :meth:`synthetic_sample`."""
        import torch

        generator = generator or torch.Generator().manual_seed(0)
        return torch.stack([self.encode(self.synthetic_sample(cfg, generator), cfg) for _ in range(batch_size)])

    def visualize(self, cond: "torch.Tensor", cfg: "PitiConfig") -> "torch.Tensor":
        """Condition ``(C, S, S)`` -> RGB picture ``(3, S, S)`` in [0, 1] for grids and reports."""
        lo, hi = self.condition_spec(cfg).value_range
        x = ((cond - lo) / (hi - lo)).clamp(0, 1)
        return x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)

    def alignment(self, samples: "torch.Tensor", batch: Mapping[str, Any], cfg: "PitiConfig") -> dict[str, float]:
        """How well generated ``samples`` (B, 3, H, W in [-1, 1]) follow the batch's conditions.

        Returns metric name -> value; ``alignment_directions`` says which way each is better. The
        default measures nothing; tasks override it. ``piti eval`` reports it through the built-in
        ``alignment`` metric, on the samples and on the real images.
        """
        return {}

    def check_condition(self, cond: "torch.Tensor", cfg: "PitiConfig", where: str) -> None:
        """Raise DataError unless ``cond`` (C, S, S) matches :meth:`condition_spec` (run before training)."""
        import torch

        from piti_core.errors import DataError

        spec = self.condition_spec(cfg)
        s = cfg.encoder.cond_size
        if tuple(cond.shape) != (spec.channels, s, s):
            raise DataError(f"{where}: task '{self.name}' expects conditions of shape {(spec.channels, s, s)}, "
                            f"the data set gives {tuple(cond.shape)}; check the data set and the task's options")
        lo, hi = spec.value_range
        if not torch.isfinite(cond).all() or cond.min() < lo - 1e-4 or cond.max() > hi + 1e-4:
            raise DataError(f"{where}: task '{self.name}' conditions must lie in [{lo}, {hi}], the data set gives "
                            f"[{float(cond.min()):.3g}, {float(cond.max()):.3g}]")

    # ------------------------------------------------------------------ condition files
    def input_suffixes(self, cfg: "PitiConfig") -> tuple[str, ...]:
        """The file suffixes (with the dot) that :meth:`preprocess` reads: ``piti sample --input DIR`` takes
        the folder's files with one of them. Default: images and ``.npy`` (:data:`DEFAULT_INPUT_SUFFIXES`);
        a task reading its own format (``.json`` keypoints ...) names it here."""
        return DEFAULT_INPUT_SUFFIXES

    def input_kind(self, cfg: "PitiConfig") -> str:
        """The input widget the demo offers (:data:`INPUT_KINDS`): ``"sketch"`` (draw dark strokes on white),
        ``"labels"`` (paint the colours of the spec's ``palette``), ``"image"`` (draw on a white canvas) or
        ``"upload"`` (a condition file only). Default: ``"labels"`` when the spec has a palette, else
        ``"sketch"`` for one channel, else ``"image"``."""
        spec = self.condition_spec(cfg)
        return "labels" if spec.palette else "sketch" if spec.channels == 1 else "image"

    def check_preprocessed(self, cond: Any, cfg: "PitiConfig", source: Any) -> "torch.Tensor":
        """``cond``, what :meth:`preprocess` returned for the user's file ``source``, once it is a float
        tensor ``(1, C, S, S)`` (``S = cfg.encoder.cond_size``) of finite values in the spec's value range;
        otherwise a :class:`~piti_core.errors.PluginError` that names the task and its plugin's distribution:
        the plugin broke its own :meth:`condition_spec`, not the user's file. ``piti sample`` and the demo
        check every condition with it before sampling."""
        from piti_core.errors import PluginError

        spec = self.condition_spec(cfg)
        s = cfg.encoder.cond_size
        problem = condition_mismatch(cond, spec, (1, spec.channels, s, s))
        if problem is None:
            return cond
        got, want = problem
        raise PluginError(f"{task_origin(self)}: preprocess() returned {got} for {_source_name(source)}, but its "
                          f"ConditionSpec says {want}; this is a bug in the plugin: report it to its authors")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"


# the input widgets the demo knows (Task.input_kind)
INPUT_KINDS = ("sketch", "labels", "image", "upload")
# the files `piti sample --input DIR` takes for a task that names none of its own (Task.input_suffixes)
DEFAULT_INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")
VALUE_TOLERANCE = 1e-4  # how far outside its value range a condition value may lie (float rounding)


def condition_mismatch(cond: Any, spec: ConditionSpec, shape: tuple[int, ...]) -> tuple[str, str] | None:
    """``(what cond is, what the spec wants)`` for the first way ``cond`` misses a float tensor of ``shape``
    with finite values in ``spec.value_range``; None when it matches."""
    import torch

    lo, hi = spec.value_range
    if not isinstance(cond, torch.Tensor):
        kind = type(cond)
        return f"an object of type {kind.__module__}.{kind.__qualname__}", f"a torch tensor of shape {shape}"
    if tuple(cond.shape) != tuple(shape):
        return f"shape {tuple(cond.shape)}", f"{tuple(shape)}"
    if not cond.is_floating_point():
        return f"dtype {cond.dtype}", f"a float tensor ({spec.dtype})"
    finite = torch.isfinite(cond)
    if not bool(finite.all()):
        return f"{int((~finite).sum())} NaN/inf value(s)", f"finite values in [{lo}, {hi}]"
    low, high = float(cond.min()), float(cond.max())
    if low < lo - VALUE_TOLERANCE or high > hi + VALUE_TOLERANCE:
        return f"values in [{low:.3g}, {high:.3g}]", f"[{lo}, {hi}]"
    return None


def task_origin(task: Task) -> str:
    """``task 'NAME' (distribution version)``: the task and the plugin that registered it with the plugin
    host, for messages that blame the plugin (just ``task 'NAME'`` for a task the host does not hold)."""
    from piti_core.plugins import get_plugin_manager

    host = get_plugin_manager()
    record = host.record_of("tasks", task.name) if host.tasks.get(task.name) is task else None
    if record is None:
        return f"task '{task.name}'"
    origin = " ".join(str(p) for p in (record.distribution, record.version) if p) if record.distribution else None
    return f"task '{task.name}' ({origin or f'module {record.module}'})"


def _source_name(source: Any) -> str:
    """A condition source for a message: its path, ``an in-memory image``, or the files of a tuple."""
    if isinstance(source, (tuple, list)):
        return " + ".join(_source_name(s) for s in source)
    return str(source) if isinstance(source, (str, Path)) else "an in-memory image"
