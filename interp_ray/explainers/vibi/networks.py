"""VIBI's two networks and its relaxed k-of-d chunk selection.

    log p(·|x) = selector(x)                 a log-softmax over the d = (H/c)·(W/c) chunks of x
    z ≈ max_{j=1..k} Gumbel-softmax_τ(log p)  a relaxed k-hot vector (L2X's subset sampling, as the released code)
    x ⊙ z                                    z upsampled to H×W (nearest: each chunk is c×c pixels), every channel
    q(y | x ⊙ z) = approximator(x ⊙ z)       trained to give f's class
At test time z is the exact k-hot of the k highest-scoring chunks.

Architecture: the released MNIST code's ``cnn2`` explainer (conv 5×5, ReLU, pool to the chunk grid, conv 5×5 → one
score per chunk) and its ``cnn`` approximator (two conv 5×5 + ReLU + 2×2 max-pool blocks, then a linear layer), with
the widths configurable and any C×H×W input whose sides the chunk size divides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from interp_ray.explainers.vibi.config import VibiConfig


class ChunkSelector(nn.Module):
    """x (N×C×H×W) → log p over the chunk grid (N × d), row-major over (H/c) × (W/c)."""

    def __init__(self, channels: int, chunk: int, width: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(),
                                      nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(),
                                      nn.MaxPool2d(chunk))  # one cell per chunk
        self.score = nn.Conv2d(2 * width, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.score(self.features(x)).flatten(1), dim=1)


class Approximator(nn.Module):
    """The masked input → class logits."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int):
        super().__init__()
        c, h, w = shape
        self.features = nn.Sequential(nn.Conv2d(c, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.classify = nn.Linear(2 * width * (h // 4) * (w // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x).flatten(1))


def relaxed_subset(log_p: torch.Tensor, k: int, tau: float, uniform: torch.Tensor) -> torch.Tensor:
    """A relaxed k-hot sample per row: k independent Gumbel-softmax draws over the chunks, their elementwise max.

    ``uniform`` holds the U(0, 1) draws, N × S × k × d (S samples per row): the caller owns the randomness, so a
    step is reproducible from its seed on any device.
    """
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
    return torch.softmax((log_p[:, None, None, :] + gumbel) / tau, dim=-1).amax(dim=2)   # N × S × d


def top_k(log_p: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-hot of the k highest-scoring chunks per row (N × d, float)."""
    idx = log_p.topk(k, dim=1).indices
    return torch.zeros_like(log_p).scatter_(1, idx, 1.0)


def chunk_mask(z: torch.Tensor, grid: tuple[int, int], chunk: int) -> torch.Tensor:
    """Chunk weights (… × d) as pixel weights (… × H × W): each chunk's value over its c×c pixels."""
    gh, gw = grid
    m = z.reshape(*z.shape[:-1], gh, gw)
    return m.repeat_interleave(chunk, dim=-2).repeat_interleave(chunk, dim=-1)


def prior_kl(log_p: torch.Tensor, direction: str) -> torch.Tensor:
    """KL between p(·|x) and the uniform prior over the d chunks, per row."""
    d = log_p.shape[1]
    log_r = -math.log(d)
    if direction == "uniform_to_p":
        return (log_r - log_p).sum(1) / d                 # KL(r ‖ p) = Σ r (log r − log p)
    return (log_p.exp() * (log_p - log_r)).sum(1)         # KL(p ‖ r)


class VibiNet(nn.Module):
    """Selector and approximator as one module (one DDP wrap; every parameter takes part in a training step)."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, cfg: VibiConfig):
        super().__init__()
        c, h, w = shape
        self.shape, self.cfg = (int(c), int(h), int(w)), cfg
        self.grid = (h // cfg.chunk_size, w // cfg.chunk_size)
        self.selector = ChunkSelector(c, cfg.chunk_size, cfg.selector_width)
        self.approximator = Approximator(self.shape, num_classes, cfg.approximator_width)

    @property
    def num_chunks(self) -> int:
        return self.grid[0] * self.grid[1]

    def masked(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x (N×C×H×W) kept where z says: z N × d → N×C×H×W; z N × S × d → (N·S)×C×H×W."""
        m = chunk_mask(z, self.grid, self.cfg.chunk_size)
        if z.ndim == 2:
            return x * m[:, None]
        return (x[:, None] * m[:, :, None]).flatten(0, 1)

    def forward(self, x: torch.Tensor, uniform: torch.Tensor | None = None, k: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log q(y | x ⊙ z) N × classes, log p N × d, z). With ``uniform`` (N × S × k × d draws) z is the
        relaxed sample and log q is averaged over the S samples (the code's multi-shot average); without, z is the
        top-k (``k`` chunks, the configured k by default)."""
        log_p = self.selector(x)
        if uniform is None:
            z = top_k(log_p, k or self.cfg.k)
            return F.log_softmax(self.approximator(self.masked(x, z)), dim=1), log_p, z
        z = relaxed_subset(log_p, self.cfg.k, self.cfg.tau, uniform)
        log_q = F.log_softmax(self.approximator(self.masked(x, z)), dim=1)
        return log_q.view(len(x), z.shape[1], -1).mean(1), log_p, z
