"""Image operations that saliency methods and saliency metrics both need: the Gaussian blur GFI reveals under its
mask, occlusion uses as a baseline and deletion/insertion fade towards.

A neutral module (torch only, Ray-free) because explainers and metrics are siblings: neither imports the other
(DESIGN.md, "Which way imports run"), and both must blur the same way for their numbers to be comparable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAPER_BLUR_RADIUS = 11.0  # PIL GaussianBlur(11) in GFI's code (Du et al., KDD'18), for 224-pixel inputs
PAPER_INPUT_SIZE = 224


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W with reflect padding (no dark frame creeping in from the border)."""
    radius = min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x.clone()
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, [radius, radius, 0, 0], mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, [0, 0, radius, radius], mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def paper_blur_sigma(width: int) -> float:
    """The paper's blur (11 px at 224 px) scaled to an input ``width`` pixels wide."""
    return PAPER_BLUR_RADIUS * width / PAPER_INPUT_SIZE


def paper_blur(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N×C×H×W) blurred as GFI's paper blurs, scaled to its width."""
    return gaussian_blur(x, paper_blur_sigma(x.shape[-1]))


__all__ = ["PAPER_BLUR_RADIUS", "PAPER_INPUT_SIZE", "gaussian_blur", "paper_blur", "paper_blur_sigma"]
