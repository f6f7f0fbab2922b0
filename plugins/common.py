"""Kept for plugins written before the public contract: these helpers now live in the core.

Import them from :mod:`piti_core.contract` (``from piti_core.contract import load_rgb, fit_condition``).
"""

from __future__ import annotations

from piti_core.data.conditions import as_path, fit_condition, fit_field, is_pil, load_rgb

__all__ = ["as_path", "fit_condition", "fit_field", "is_pil", "load_rgb"]
