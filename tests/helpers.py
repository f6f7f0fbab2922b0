"""Small helpers shared by test modules."""

import contextlib


@contextlib.contextmanager
def one_torch_thread():
    """Run with one torch thread: small ops on the shared 2-core CI machines are faster that way."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


SMALL_ENCODER = ["encoder.layers=1", "encoder.width=32", "encoder.heads=2", "encoder.cnn_channels=8,8,16,16"]


def random_run(out, task: str = "sketch", *, upsampler: bool = True, overrides=(), seed: int = 0):
    """A run directory with random tiny weights (no training) for ``task``; returns (path, cfg, host)."""
    import torch

    from piti_core.config import resolve_config
    from piti_core.models.build import build_base, build_upsampler
    from piti_core.plugins import PluginHost
    from piti_core.runs import save_run

    host = PluginHost()
    host.load_entry_points()
    cfg = resolve_config(preset="tiny", overrides=[*SMALL_ENCODER, *overrides], extra_sections=host.task_sections())
    channels = host.task(task).condition_spec(cfg).channels
    torch.manual_seed(seed)
    models = {"base": build_base(cfg, channels)}
    if upsampler:
        models["upsampler"] = build_upsampler(cfg, channels)
    save_run(out, cfg, models, task=task, cond_channels=channels, source="test")
    return out, cfg, host
