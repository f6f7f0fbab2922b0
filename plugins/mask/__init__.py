"""The ``mask`` task: semantic label map -> image."""

from piti_core.contract import hookimpl
from piti_plugins.mask.task import MaskOptions, MaskTask

__all__ = ["MaskTask", "MaskOptions", "register_tasks"]


@hookimpl
def register_tasks(register):
    register(MaskTask())
