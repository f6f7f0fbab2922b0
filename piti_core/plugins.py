"""Plugin discovery and registries (tasks, samplers, metrics, CLI commands).

Plugins are found through the ``piti`` entry-point group, the built-in ones included (they are
declared in piti's own pyproject.toml). Loading follows conda's model rather than crashing: a plugin
that fails to import, whose hook raises, that implements a hook that does not exist, or that clashes
with another plugin is rolled back, recorded with status ``error`` and reported in one line on stderr
(through the ``piti`` logger); everything else keeps working. ``PITI_STRICT_PLUGINS=1`` re-raises.

Environment:
    PITI_DISABLE_PLUGINS=a,b   block these plugins (entry-point or distribution names)
    PITI_LOAD_PLUGINS=a,b      load only these
    PITI_STRICT_PLUGINS=1      raise on the first broken plugin
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from importlib import metadata
from typing import Any, Callable, Iterable

import attrs
import pluggy

from piti_core import hookspecs
from piti_core.errors import ConfigError, PluginError, UsageError

log = logging.getLogger("piti.plugins")

GROUP = "piti"
HOOKS = ("register_tasks", "register_samplers", "register_metrics")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


@attrs.define
class PluginRecord:
    """What ``piti plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    source: str = "entry-point"  # entry-point | option (-p) | manual
    status: str = "ok"  # ok | blocked | error
    message: str = ""
    provides: dict[str, list[str]] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @property
    def label(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else self.source
        return f"plugin '{self.name}' ({dist})"


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def strict_mode() -> bool:
    return os.environ.get("PITI_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def entry_points_for_group(group: str = GROUP) -> list:
    """The installed entry points of ``group`` (patched by ``piti_core.testing`` to fake some)."""
    return list(metadata.entry_points(group=group))


class _Staging:
    """Collects what one plugin registers so it can be validated and rolled back as a unit."""

    def __init__(self, host: "PluginHost", record: PluginRecord):
        self.host, self.record = host, record
        self.items: dict[str, dict[str, Any]] = {"tasks": {}, "samplers": {}, "metrics": {}}

    def task(self, task) -> None:
        from piti_core.tasks import Task

        if not isinstance(task, Task):
            raise PluginError(f"register_tasks got {type(task).__name__}, expected a piti_core.tasks.Task")
        from piti_core.config import SCALARS, SECTIONS

        name = getattr(task, "name", "")
        # a task's options live under [tasks.NAME]; today's top-level [NAME] form is still read, so a name
        # equal to a core section (or to the namespace itself) would be ambiguous there
        if name in SECTIONS or name in SCALARS or name == "tasks":
            raise PluginError(f"task name '{name}' is reserved (a core config section); rename the task")
        from piti_core.metrics import check_alignment_directions

        check_alignment_directions(task)
        self._add("tasks", name, task)

    def metric(self, metric, fn: Any = None) -> None:
        """``register(metric)`` with a :class:`piti_core.metrics.Metric`; the deprecated ``register(name,
        fn)`` is wrapped (:func:`piti_core.metrics.legacy_metric`)."""
        from piti_core.metrics import check_metric, legacy_metric

        if isinstance(metric, str):
            self._add("metrics", metric, legacy_metric(metric, fn))
            return
        if fn is not None:
            raise PluginError("register_metrics: register(metric) takes one Metric object")
        check_metric(metric)
        self._add("metrics", metric.name, metric)

    def named(self, kind: str) -> Callable[[str, Any], None]:
        def register(name: str, obj: Any) -> None:
            if not callable(obj):
                raise PluginError(f"{kind[:-1]} '{name}' is not callable")
            self._add(kind, name, obj)

        return register

    def _add(self, kind: str, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PluginError(f"invalid {kind[:-1]} name {name!r}: use lower-case letters, digits, '-' or '_'")
        if name in self.items[kind]:
            raise PluginError(f"{kind[:-1]} '{name}' registered twice by the same plugin")
        owner = self.host.owners[kind].get(name)
        if owner is not None:
            first = self.host.records[owner]
            raise PluginError(
                f"{kind[:-1]} '{name}' is provided by both {first.label} and {self.record.label}; "
                f"uninstall one or block it with PITI_DISABLE_PLUGINS={self.record.name}"
            )
        self.items[kind][name] = obj


class PluginHost:
    """A pluggy manager plus validated registries and a record per plugin."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.tasks: dict[str, Any] = {}
        self.samplers: dict[str, Callable] = {}
        self.metrics: dict[str, Any] = {}  # name -> piti_core.metrics.Metric
        self.owners: dict[str, dict[str, str]] = {"tasks": {}, "samplers": {}, "metrics": {}}
        self.commands_done: set[str] = set()

    # ------------------------------------------------------------------------------- loading
    def load_entry_points(self, group: str = GROUP) -> None:
        """Load every entry point of ``group``; built-in plugins (distribution ``piti``) first."""
        eps = entry_points_for_group(group)
        eps.sort(key=lambda ep: (_dist_name(ep) != "piti", ep.name))
        disabled, allowed = _env_list("PITI_DISABLE_PLUGINS"), _env_list("PITI_LOAD_PLUGINS")
        for ep in eps:
            dist = _dist_name(ep)
            record = PluginRecord(
                name=ep.name, module=ep.value, distribution=dist, version=_dist_version(ep)
            )
            names = {ep.name, dist} - {None}
            if disabled and names & disabled:
                record.status, record.message = "blocked", "blocked by PITI_DISABLE_PLUGINS"
            elif allowed is not None and not names & allowed:
                record.status, record.message = "blocked", "not in PITI_LOAD_PLUGINS"
            if ep.name in self.records:
                other = self.records[ep.name]
                self._fail(record, f"the plugin name '{ep.name}' is already used by {other.label}")
                continue
            self.records[ep.name] = record
            if record.status == "blocked":
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._fail(record, f"import failed: {type(exc).__name__}: {exc}", exc)
                continue
            self._register(obj, record)

    def load_module(self, module_name: str) -> PluginRecord:
        """Load an uninstalled plugin module by import name (``piti -p some.module``)."""
        if module_name in self.records:
            return self.records[module_name]
        record = PluginRecord(name=module_name, module=module_name, source="option")
        try:
            obj = importlib.import_module(module_name)
        except Exception as exc:  # SyntaxError included: a broken module must not take the CLI down
            self.records[module_name] = record
            self._fail(record, f"import failed: {type(exc).__name__}: {exc}", exc)
            return record
        if self.pm.is_registered(obj):  # installed too: already loaded through its entry point
            return self.records[self.pm.get_name(obj)]
        self.records[module_name] = record
        self._register(obj, record)
        if record.status == "ok" and not self.pm.get_hookcallers(self.pm.get_plugin(record.name)):
            self.pm.unregister(name=record.name)
            self._fail(record, f"{getattr(obj, '__file__', None) or module_name} defines no piti hooks (functions "
                               "marked @hookimpl: register_tasks, register_samplers, register_metrics, "
                               "register_commands); check the module name")
        return record

    def add_plugin(self, obj: Any, name: str, distribution: str | None = None) -> PluginRecord:
        """Register an in-process plugin object (tests, notebooks)."""
        record = PluginRecord(name=name, module=getattr(obj, "__name__", repr(obj)),
                              distribution=distribution, source="manual")
        if name in self.records:
            raise PluginError(f"a plugin named '{name}' is already loaded")
        self.records[name] = record
        self._register(obj, record)
        return record

    def _register(self, obj: Any, record: PluginRecord) -> None:
        try:
            self.pm.register(obj, name=record.name)
        except Exception as exc:  # pluggy validates hook signatures here
            self._fail(record, f"invalid hook implementation: {exc}", exc)
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=record.name)
            self._fail(record, f"implements an unknown hook: {exc}", exc)
            return
        staging = _Staging(self, record)
        registers = {
            "register_tasks": staging.task,
            "register_samplers": staging.named("samplers"),
            "register_metrics": staging.metric,
        }
        for hook in HOOKS:
            try:
                self._call_one(hook, record.name, register=registers[hook])
            except Exception as exc:
                self.pm.unregister(name=record.name)
                where = f"{hook} raised" if not isinstance(exc, PluginError) else hook
                msg = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                self._fail(record, f"{where}: {msg}", exc)
                return
        for kind, items in staging.items.items():
            getattr(self, kind).update(items)
            for name in items:
                self.owners[kind][name] = record.name
            if items:
                record.provides[kind] = sorted(items)

    def _call_one(self, hook: str, plugin_name: str, **kwargs) -> list:
        others = [p for p in self.pm.get_plugins() if self.pm.get_name(p) != plugin_name]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)

    def _fail(self, record: PluginRecord, message: str, exc: BaseException | None = None) -> None:
        message = " ".join(part.strip() for part in message.splitlines() if part.strip())  # one line
        record.status, record.message = "error", message
        if strict_mode():
            raise PluginError(f"{record.label}: {message}") from exc
        log.warning("%s failed and was skipped: %s (see `piti plugins`)", record.label, message)

    # ------------------------------------------------------------------------------- commands
    def add_commands(self, group, reserved: Iterable[str] = ()) -> None:
        """Call ``register_commands`` of each loaded plugin once, isolating failures."""
        import click

        reserved = set(reserved)
        for name, record in list(self.records.items()):
            if record.status != "ok" or name in self.commands_done:
                continue
            self.commands_done.add(name)
            collector = click.Group(name="collector")
            try:
                self._call_one("register_commands", name, cli=collector)
                clash = sorted(set(collector.commands) & (reserved | set(group.commands)))
                if clash:
                    raise PluginError(f"command '{clash[0]}' already exists")
            except Exception as exc:
                self._rollback(record)
                self._fail(record, f"register_commands: {type(exc).__name__}: {exc}", exc)
                continue
            for cmd_name, cmd in collector.commands.items():
                group.add_command(cmd, cmd_name)
            if collector.commands:
                record.provides["commands"] = sorted(collector.commands)

    def _rollback(self, record: PluginRecord) -> None:
        for kind, names in record.provides.items():
            for name in names:
                getattr(self, kind, {}).pop(name, None)
                self.owners.get(kind, {}).pop(name, None)
        record.provides = {}
        if self.pm.has_plugin(record.name):
            self.pm.unregister(name=record.name)

    # ------------------------------------------------------------------------------- lookups
    def task(self, name: str):
        """The registered task ``name``; an unknown name lists the valid ones."""
        if name not in self.tasks:
            valid = ", ".join(sorted(self.tasks)) or "none installed"
            raise UsageError(f"unknown task '{name}'; valid tasks: {valid}")
        return self.tasks[name]

    def sampler(self, name: str, key: str = "sample.sampler") -> Callable:
        """The registered sampler ``name`` (the built-in ones come from the ``samplers`` plugin); an unknown
        name is a ConfigError naming ``key`` and the valid names."""
        if name not in self.samplers:
            valid = ", ".join(sorted(self.samplers)) or "none installed"
            blocked = sorted(r.name for r in self.records.values() if r.status == "blocked")
            note = f" (blocked plugins: {', '.join(blocked)})" if blocked else ""
            raise ConfigError(f"unknown sampler {name!r} ({key}); valid names: {valid}{note}")
        return self.samplers[name]

    def record_of(self, kind: str, name: str) -> PluginRecord | None:
        """The record of the plugin that registered ``name`` among ``kind`` (tasks, samplers ...), or None."""
        owner = self.owners.get(kind, {}).get(name)
        return self.records.get(owner) if owner is not None else None

    def task_sections(self) -> dict[str, type | None]:
        """Task name -> its config class, for :func:`piti_core.config.resolve_config`."""
        return {name: getattr(task, "config_class", None) for name, task in self.tasks.items()}

    def failures(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "error"]


def _dist_name(ep) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else None


def _dist_version(ep) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else None


_HOST: PluginHost | None = None


def get_plugin_manager() -> PluginHost:
    """The process-wide plugin host, created and loaded on first use (never at import time)."""
    global _HOST
    if _HOST is None:
        host = PluginHost()
        _HOST = host
        try:
            host.load_entry_points()
        except BaseException:
            _HOST = None
            raise
    return _HOST


def reset_plugin_manager() -> None:
    """Forget the cached host (tests; after installing a plugin in the same process)."""
    global _HOST
    _HOST = None
