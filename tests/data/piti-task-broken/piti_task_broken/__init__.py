"""A broken plugin used by piti's CI: importing it fails, piti must report it and keep working."""

import piti_core.no_such_module  # noqa: F401  (deliberately missing)
