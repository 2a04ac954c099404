"""Torch's process-wide settings, changed for a block and always put back (a test must not leave them behind)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch's intra-op thread count set to ``n`` inside the block and restored after it, whatever happens."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
