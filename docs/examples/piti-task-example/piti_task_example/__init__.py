"""piti-task-example: a third-party task plugin for piti (colourise a grayscale photo, with colour hints).

The ``piti`` entry point of this distribution names this module; piti imports it on first use and
calls its hooks. The plugin imports piti only through ``piti_core.contract`` and keeps torch out of
its import (``piti --help`` loads every plugin). Imports inside the package are relative, so a copy
under another name works with ``piti -p NAME`` without installing it.
"""

from piti_core.contract import hookimpl, require_contract

require_contract(">=2.0,<3")  # an older or newer piti: one clear line naming both versions

from .hints import HINTS, hints_from_photo, read_hints  # noqa: E402
from .metrics import ChromaError, chroma  # noqa: E402
from .task import LUMA_WEIGHTS, ColorizeOptions, ColorizeTask, colourfulness, luminance  # noqa: E402

__all__ = ["ColorizeTask", "ColorizeOptions", "HINTS", "ChromaError", "LUMA_WEIGHTS", "luminance", "colourfulness",
           "chroma", "hints_from_photo", "read_hints", "register_tasks", "register_metrics"]


@hookimpl
def register_tasks(register):
    register(ColorizeTask())


@hookimpl
def register_metrics(register):
    register(ChromaError())
