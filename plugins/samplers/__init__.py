"""Built-in samplers (DDPM ancestral, DDIM, DPM-Solver++(2M) and its SDE variant), registered like any plugin's.

The functions are imported only when a sampler is called, so loading plugins stays torch-free.
"""

from __future__ import annotations

import importlib

from piti_core.hookspecs import hookimpl

BUILTIN = {"ddpm": "sample_ddpm", "ddim": "sample_ddim", "dpmpp": "sample_dpmpp_2m", "dpmpp-sde": "sample_dpmpp_2m_sde"}


class LazySampler:
    """Calls ``piti_core.diffusion.samplers.<attr>``, importing it on first use."""

    def __init__(self, attr: str):
        self.attr = attr
        self.__name__ = attr

    def __call__(self, *args, **kwargs):
        module = importlib.import_module("piti_core.diffusion.samplers")
        return getattr(module, self.attr)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<sampler {self.attr}>"


@hookimpl
def register_samplers(register):
    for name, attr in BUILTIN.items():
        register(name, LazySampler(attr))
