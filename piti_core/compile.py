"""``--compile``: torch.compile for piti models, in place, so state-dict keys stay unchanged.

:func:`compile_model` compiles the decoder of a :class:`~piti_core.models.build.PitiModel` (and, for
training, its encoder too) with ``nn.Module.compile``: the module keeps its parameters and names (no
``_orig_mod.`` prefix in checkpoints), only its ``__call__`` runs through ``torch.compile``. For
sampling the encoder is left eager: it runs once per image, while the decoder runs at every step.

Modes: torch's default on the CPU and for training; ``reduce-overhead`` (CUDA graphs) for sampling on
CUDA GPUs, where the per-step launch overhead of a small batch matters. Shapes are compiled static
(``dynamic=False``): sampling calls the decoder with one batch size (doubled once by guidance) and
timesteps that change in value, not in shape, so a whole sample is one compilation (the last, smaller
batch of a folder adds one). Each compiled module keeps its own recompile budget
(``isolate_recompiles``), so the encoder, base decoder and upsampler do not share torch's limit of 8.

The first call compiles (seconds to minutes, see docs/compile.md); a failure then is re-raised as one
:class:`~piti_core.errors.CompileError` line. ``PITI_COMPILE_BACKEND`` picks another torch.compile
backend (e.g. ``aot_eager`` to tell an inductor problem from a tracing one).
"""

from __future__ import annotations

import os
import platform
import shutil
from typing import Any, Callable

import torch
from torch import nn

from piti_core.errors import CompileError, UsageError

PURPOSES = ("train", "sample")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKEND_ENV = "PITI_COMPILE_BACKEND"


def default_mode(device: torch.device | str, purpose: str) -> str:
    """``reduce-overhead`` (CUDA graphs) for sampling on CUDA, ``default`` everywhere else."""
    return "reduce-overhead" if torch.device(device).type == "cuda" and purpose == "sample" else "default"


def cpp_compiler() -> str | None:
    """The C++ compiler torch's inductor backend uses on the CPU, or None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except ImportError:  # torch moved it: look for what inductor looks for ($CXX, else g++)
        return shutil.which(os.environ.get("CXX", "g++"))
    except Exception:  # torch._inductor.exc.InvalidCxxCompiler
        return None


def check_available(device: torch.device | str, backend: str | Callable = "inductor") -> None:
    """Raise CompileError with what to do when torch.compile cannot work here."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise CompileError(f"torch.compile is not supported with Python {platform.python_version()} and torch "
                           f"{torch.__version__} on this platform; drop --compile")
    if backend != "inductor":
        return
    kind = torch.device(device).type
    if kind == "cpu" and cpp_compiler() is None:
        cxx = os.environ.get("CXX", "g++")
        raise CompileError(f"--compile on the CPU needs a C++ compiler for torch's inductor backend and '{cxx}' "
                           "was not found; install one (e.g. apt-get install g++, or set CXX) or drop --compile")
    if kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise CompileError("--compile on CUDA needs Triton (pip install triton, matching your torch) "
                               "or drop --compile")
    elif kind not in ("cpu", "cuda"):
        raise CompileError(f"--compile supports the cpu and cuda devices, not '{kind}'; drop --compile")


def compile_model(model: nn.Module, *, device: torch.device | str, purpose: str = "train",
                  mode: str | None = None, backend: str | Callable | None = None) -> nn.Module:
    """Compile ``model`` in place for ``purpose`` (``train`` or ``sample``) on ``device``; returns it.

    A :class:`~piti_core.models.build.PitiModel` gets its decoder compiled (and its encoder, for
    training); any other module is compiled as a whole. ``mode``: a torch.compile mode (default:
    :func:`default_mode`). ``backend`` (a torch.compile backend name or callable) defaults to
    ``$PITI_COMPILE_BACKEND`` or ``inductor``. Call it after ``.to(device)`` and before wrapping in
    DDP. Compiling a module twice is a no-op.
    """
    if purpose not in PURPOSES:
        raise UsageError(f"unknown compile purpose '{purpose}'; valid: {', '.join(PURPOSES)}")
    mode = mode or default_mode(device, purpose)
    if mode not in MODES:
        raise UsageError(f"unknown torch.compile mode '{mode}'; valid: {', '.join(MODES)}")
    backend = backend or os.environ.get(BACKEND_ENV) or "inductor"
    check_available(device, backend)
    parts = [("decoder", model.decoder)] if hasattr(model, "decoder") else [("model", model)]
    if purpose == "train" and hasattr(model, "encoder"):
        parts.append(("encoder", model.encoder))
    # sampling with CUDA graphs: one decoder call per step, outputs cloned (see _Compiled); training
    # leaves the step boundaries to torch (forward and backward of one iteration belong together)
    cuda_graphs = (purpose == "sample" and backend == "inductor" and torch.device(device).type == "cuda"
                   and mode in ("reduce-overhead", "max-autotune"))
    for name, module in parts:
        if is_compiled(module):
            continue
        options: dict[str, Any] = {"backend": backend, "dynamic": False}
        if backend == "inductor" and mode != "default":
            options["mode"] = mode
        module.compile(**options, **recompile_options())
        module._compiled_call_impl = _Compiled(module._compiled_call_impl, f"{type(module).__name__} ({name})",
                                               cuda_graphs)
    return model


SHARED_RECOMPILE_LIMIT = 32


def recompile_options(compile_fn: Callable = torch.compile) -> dict[str, Any]:
    """``isolate_recompiles=True`` where torch.compile takes it (torch >= 2.12): each compiled module
    keeps its own budget of recompilations. Older torch has one budget for the process (8 by default),
    which the encoder, base decoder and upsampler then share: it is raised to
    :data:`SHARED_RECOMPILE_LIMIT` instead, and no option is passed."""
    import inspect

    if "isolate_recompiles" in inspect.signature(compile_fn).parameters:
        return {"isolate_recompiles": True}
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the limit's name in newer / older torch
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), SHARED_RECOMPILE_LIMIT))
            break
    return {}


def is_compiled(module: nn.Module) -> bool:
    """True when ``module`` itself or any of its submodules runs through torch.compile."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def uncompile(module: nn.Module) -> nn.Module:
    """Make ``module`` (and its submodules) run eagerly again, e.g. a copy used for a few preview samples."""
    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return module


class _Compiled:
    """A compiled ``__call__``: turns a backend failure into one CompileError line; with CUDA graphs,
    marks each call as a new step and clones the outputs, whose memory the next replay overwrites."""

    def __init__(self, fn, name: str, cuda_graphs: bool):
        self.fn, self.name, self.cuda_graphs = fn, name, cuda_graphs

    def __call__(self, *args, **kwargs):
        from torch._dynamo.exc import BackendCompilerFailed

        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            out = self.fn(*args, **kwargs)
        except BackendCompilerFailed as exc:
            cause = exc.inner_exception if getattr(exc, "inner_exception", None) is not None else exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
            raise CompileError(f"torch.compile failed on the {self.name}: {type(cause).__name__}: {first}; "
                               "run without --compile (PITI_DEBUG=1 shows the traceback)") from exc
        if self.cuda_graphs:
            out = torch.utils._pytree.tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, out)
        return out
