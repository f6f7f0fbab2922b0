"""Built-in samplers (DDPM ancestral, DDIM, DPM-Solver++(2M) and its SDE variant), registered like any plugin's.

This plugin (entry point ``samplers``) is the one place the built-in samplers are registered; every caller
asks the plugin host for a sampler by name. The functions are imported only when a sampler is called, so
loading plugins stays torch-free.
"""

from __future__ import annotations

import importlib

from piti_core.hookspecs import hookimpl

BUILTIN = {"ddpm": "sample_ddpm", "ddim": "sample_ddim", "dpmpp": "sample_dpmpp_2m", "dpmpp-sde": "sample_dpmpp_2m_sde"}


class LazySampler:
    """Calls the built-in sampler ``name`` (``piti_core.diffusion.samplers.SAMPLERS[name]``), importing it on
    first use."""

    def __init__(self, name: str):
        self.name = name
        self.__name__ = BUILTIN[name]

    def resolve(self):
        """The sampler function itself."""
        module = importlib.import_module("piti_core.diffusion.samplers")
        return module.SAMPLERS[self.name]

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<sampler {self.__name__}>"


@hookimpl
def register_samplers(register):
    for name in BUILTIN:
        register(name, LazySampler(name))
