"""FLINT's losses and their warm-up schedules (Parekh et al., NeurIPS 2021; the authors' ``flint.py``).

Losses, computed exactly as the code does (``flint_losses``; the test checks them on a hand-worked example):

* ``pred`` = CE(f(x), y)
* ``fid``  = −mean_x Σ_c softmax(f(x))_c · log softmax(h(Φ(x)))_c, **f(x) detached**
  (``loss_cce(expl, output.detach())``);
  f's hidden layers still receive gradients through Φ(f_I(x)).
* ``rec``  = MSE(d(Φ(x)), x), mean over every element (``nn.MSELoss``); L1 for CIFAR-10 (``recon_loss="l1"``).
* ``ent``  = mean_x E(|Φ(x)|) − E(mean_x |Φ(x)|), E(v) = −Σ softmax(v) log softmax(v), per mini-batch
  (conciseness − diversity; the code's ``loss_ent``).
* ``l1``   = mean |Φ| over every element of the batch (``nn.L1Loss()(embed, 0)``; i.e. ||Φ(x)||₁ / J, batch-averaged).

The total is Σ_term weight(term, epoch) · term, with the warm-up schedules of the code (``SCHEDULES``; epochs are
counted from 1 as in ``for epoch in range(1, N_EPOCH + 1)``; they are configuration and live in ``config``). Terms
whose weight is 0 are still computed and multiplied by 0, so every parameter takes part in every step (DDP needs that)
and the random streams of a BASE run (all interpretation weights 0) and a FLINT run are the same: the only
difference between them is the losses.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from interp_ray.explainers.flint.config import TERMS
from interp_ray.explainers.flint.model import FlintOutput


# ---------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------

def entropy(v: torch.Tensor) -> torch.Tensor:
    """E(v) = −Σ_i p_i log p_i with p = softmax(v) over the last axis (one value per row)."""
    logp = F.log_softmax(v, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def soft_cross_entropy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The code's ``loss_cce``: mean over rows of −Σ_c softmax(target)_c · log softmax(prediction)_c."""
    return -(F.softmax(target, dim=1) * F.log_softmax(prediction, dim=1)).sum(1).mean()


def flint_losses(out: FlintOutput, x: torch.Tensor, y: torch.Tensor | None, *,
                 recon_loss: Literal["mse", "l1"] = "mse") -> dict[str, torch.Tensor]:
    """Every loss term, unweighted (see the module docstring). ``y`` None → ``pred`` is 0 (post-hoc, unlabelled)."""
    phi_abs = out.phi.abs()
    pred = F.cross_entropy(out.logits, y) if y is not None else out.logits.sum() * 0.0
    rec = (F.mse_loss if recon_loss == "mse" else F.l1_loss)(out.recon, x)
    fid = soft_cross_entropy(out.interp_logits, out.logits.detach())
    ent = entropy(phi_abs).mean() - entropy(phi_abs.mean(0))
    l1 = phi_abs.mean()
    return {"pred": pred, "rec": rec, "fid": fid, "l1": l1, "ent": ent}


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight·term. Zero weights still multiply (keeps every parameter in the graph; see module docstring)."""
    return sum(float(weights.get(t, 0.0)) * terms[t] for t in TERMS)
