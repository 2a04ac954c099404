"""The one place that decides where torch runs."""

from __future__ import annotations

import torch


def pick_device(device: str | bool | None = "auto") -> torch.device:
    """``None``/``"auto"``: CUDA when this process can see a GPU, else CPU. ``True`` asks for CUDA (a config's
    ``use_gpu: true``), ``False`` for the CPU; any other string is a torch device (``"cpu"``, ``"cuda:1"``)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is True:
        return torch.device("cuda")
    if device is False:
        return torch.device("cpu")
    return torch.device(device)
