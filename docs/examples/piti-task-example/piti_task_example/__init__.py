"""piti-task-example: a complete third-party task plugin for piti (colourise a grayscale photo).

The ``piti`` entry point of this distribution names this module; piti imports it on first use and
calls its hook implementations. Keep this module light (no torch at import): ``piti --help`` loads
every plugin to list their commands.
"""

from piti_core.hookspecs import hookimpl
from piti_task_example.task import LUMA_WEIGHTS, ColorizeOptions, ColorizeTask, colourfulness, luminance

__all__ = ["ColorizeTask", "ColorizeOptions", "LUMA_WEIGHTS", "luminance", "colourfulness", "register_tasks"]


@hookimpl
def register_tasks(register):
    register(ColorizeTask())
