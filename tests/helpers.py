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
