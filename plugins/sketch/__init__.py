"""The ``sketch`` task: edge map / drawing -> image."""

from piti_core.contract import hookimpl
from piti_plugins.sketch.task import SketchOptions, SketchTask, edge_distance

__all__ = ["SketchTask", "SketchOptions", "edge_distance", "register_tasks"]


@hookimpl
def register_tasks(register):
    register(SketchTask())
