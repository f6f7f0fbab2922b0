"""Geometry tasks: ``depth``, ``normal`` and ``depth-normal`` -> image."""

from piti_core.contract import hookimpl
from piti_plugins.geometry.tasks import DepthNormalTask, DepthTask, NormalTask

__all__ = ["DepthTask", "NormalTask", "DepthNormalTask", "register_tasks"]


@hookimpl
def register_tasks(register):
    register(DepthTask())
    register(NormalTask())
    register(DepthNormalTask())
