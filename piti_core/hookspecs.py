"""The hooks a piti plugin can implement.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, declared as an entry
point in the ``piti`` group of its distribution::

    [project.entry-points.piti]
    foo = "piti_task_foo"

Hooks receive a ``register`` callable and call it once per thing they provide, e.g.
``register(FooTask())``. piti validates what is registered (names, types, duplicates) on the host side.
"""

from __future__ import annotations

import pluggy

PROJECT = "piti"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_tasks(register):
    """Register task plugins: ``register(task)`` with a :class:`piti_core.tasks.Task` instance."""


@hookspec
def register_samplers(register):
    """Register samplers: ``register(name, fn)`` where ``fn(model_fn, x, schedule, *, generator,
    callback, **options)`` returns the final sample (see :mod:`piti_core.diffusion.samplers`)."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics: ``register(metric)`` with a :class:`piti_core.metrics.Metric` (its
    name, direction, needs and tasks); ``piti eval`` runs those that apply to the run's task. The
    pre-v2 ``register(name, fn)`` (``fn(samples, batch, cfg)`` -> number or dict, per batch) still works
    and is deprecated."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``piti`` command group: ``cli.add_command(my_command)``."""
