"""Error types raised by piti.

Every error a user can cause derives from :class:`PitiError` and carries a message that says what
is wrong *and* what to do. The CLI prints it as one line and exits with :attr:`PitiError.exit_code`
(1 for domain errors, 2 for usage errors); a traceback only appears with ``--verbose`` or
``PITI_DEBUG=1``.
"""

from __future__ import annotations


class PitiError(Exception):
    """Base class of every error piti reports to users."""

    exit_code = 1


class ConfigError(PitiError):
    """A bad config file, key or value (a usage error)."""

    exit_code = 2


class UsageError(PitiError):
    """A bad command-line argument, e.g. an unknown task name."""

    exit_code = 2


class PluginError(PitiError):
    """A plugin failed to load, or two plugins clash."""


class DataError(PitiError):
    """A data set or input file is missing, unreadable or malformed."""


class CheckpointError(PitiError):
    """A checkpoint or run directory is missing, corrupt or does not match the model."""


class TrainingError(PitiError):
    """Training cannot go on (e.g. repeated non-finite losses)."""


class CompileError(PitiError):
    """``--compile`` cannot work here (no C++ compiler, no Triton) or torch.compile failed on a model."""
