"""FLINT's activation maximisation with partial initialisation (AM+PI; the authors' ``optimize_inp``).

Maximise C·φ_j(x) − λ_tv TV(x) − λ_bound B(x) − λ_1 ||x||₁ from κ·x₀ with Adam, 12 rounds × ``n_iter`` steps, lr 0.05
halved each round. Its settings are ``config.AMSection``; pictures are written by ``plots``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from interp_ray.explainers.flint.config import AMSection
from interp_ray.explainers.flint.model import FlintModel


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """The code's TV, per image (N,): mean |vertical neighbour difference| + mean |horizontal neighbour difference|."""
    return ((x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean((1, 2, 3))
            + (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean((1, 2, 3)))


def activation_maximisation(model: FlintModel, j: int | Sequence[int], init: torch.Tensor | None,
                            settings: AMSection | None = None, *, shape: Sequence[int] | None = None,
                            seed: int = 21) -> torch.Tensor:
    """Maximise C·φ_j(x) − λ_tv TV(x) − λ_bound B(x) − λ_1 mean|x| over x (N×C×H×W), from κ·init (AM+PI) or from
    U(0, 1) noise when ``init`` is None (random-init AM). ``j``: one attribute for every image, or one per image
    (N of them: the pictures of several attributes grown in one run). Adam, ``rounds`` × ``n_iter`` steps, lr ×
    ``lr_decay`` after each round. Returns the optimised inputs (detached, unclipped)."""
    s = settings or AMSection()
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    if init is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(tuple(shape or (1, *model.predictor.input_shape)), generator=g)
    else:
        x = s.kappa * init.detach().clone().float()
    x = x.to(dev).requires_grad_(True)
    if isinstance(j, int):
        pick = torch.full((len(x),), j, dtype=torch.long, device=dev)
    else:
        pick = torch.as_tensor(list(j), dtype=torch.long, device=dev)
        if pick.shape != (len(x),):
            raise ValueError(f"{len(pick)} attributes for {len(x)} images")
    rows = torch.arange(len(x), device=dev)
    lo, hi = s.bounds
    lr = s.lr
    try:
        with torch.enable_grad():
            for _ in range(s.rounds):
                opt = torch.optim.Adam([x], lr=lr)
                lr *= s.lr_decay
                for _ in range(s.n_iter):
                    opt.zero_grad()
                    phi = model.attributes(x)
                    # Every term per image, then summed: a batch of N runs exactly as N single-image runs (the code
                    # optimises one image at a time; Adam is element-wise, eval mode keeps images independent).
                    bound = (((x > hi) | (x < lo)).float() * x.abs()).mean((1, 2, 3))
                    objective = (s.C * phi[rows, pick] - s.lambda_l1 * x.abs().mean((1, 2, 3)) - s.lambda_bound * bound
                                 - s.lambda_tv * total_variation(x)).sum()
                    (grad,) = torch.autograd.grad(-objective, [x])
                    x.grad = grad
                    opt.step()
    finally:
        model.train(was)
    return x.detach()
