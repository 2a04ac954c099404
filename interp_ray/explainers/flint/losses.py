"""FLINT's losses and their warm-up schedules (Parekh et al., NeurIPS 2021; the authors' ``flint.py``).

Losses, computed exactly as the code does (``flint_losses``; the test checks them on a hand-worked example):

* ``pred`` = CE(f(x), y)
* ``fid``  = −mean_x Σ_c softmax(f(x))_c · log softmax(h(Φ(x)))_c, **f(x) detached** (``loss_cce(expl, output.detach())``);
  f's hidden layers still receive gradients through Φ(f_I(x)).
* ``rec``  = MSE(d(Φ(x)), x), mean over every element (``nn.MSELoss``); L1 for CIFAR-10 (``recon_loss="l1"``).
* ``ent``  = mean_x E(|Φ(x)|) − E(mean_x |Φ(x)|), E(v) = −Σ softmax(v) log softmax(v), per mini-batch
  (conciseness − diversity; the code's ``loss_ent``).
* ``l1``   = mean |Φ| over every element of the batch (``nn.L1Loss()(embed, 0)``; i.e. ||Φ(x)||₁ / J, batch-averaged).

The total is Σ_term weight(term, epoch) · term, with the warm-up schedules of the code (``SCHEDULES``; epochs are
counted from 1 as in ``for epoch in range(1, N_EPOCH + 1)``). Terms whose weight is 0 are still computed and
multiplied by 0, so every parameter takes part in every step (DDP needs that) and the random streams of a BASE run
(all interpretation weights 0) and a FLINT run are the same: the only difference between them is the losses.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from interp_ray.config import Section
from interp_ray.errors import UserError
from interp_ray.explainers.flint.model import FlintOutput


TERMS: tuple[str, ...] = ("pred", "rec", "fid", "l1", "ent")


# ---------------------------------------------------------------------------------------------------------------
# Loss-weight schedules
# ---------------------------------------------------------------------------------------------------------------

Step = tuple[int, float]  # (first epoch, counted from 1; weight from that epoch on)


class ScheduleSection(Section):
    """Loss weights by epoch. Each term is a list of ``[first_epoch, weight]`` steps (epochs counted from 1, as the
    authors' loop counts them); the weight at epoch e is that of the last step with first_epoch ≤ e, 0 before the
    first step. ``pred`` is λ_acc, ``rec`` γ, ``fid`` β, ``l1`` δη, ``ent`` δ."""

    pred: list[Step] = Field(default_factory=lambda: [(1, 1.0)])
    rec: list[Step] = Field(default_factory=list)
    fid: list[Step] = Field(default_factory=list)
    l1: list[Step] = Field(default_factory=list)
    ent: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_steps(self) -> "ScheduleSection":
        for term in TERMS:
            steps = getattr(self, term)
            firsts = [s[0] for s in steps]
            if firsts != sorted(firsts) or len(set(firsts)) != len(firsts) or any(e < 1 for e in firsts):
                raise ValueError(f"schedule {term}: first epochs must be >= 1, increasing and distinct; got {firsts}")
            if any(w < 0 for _, w in steps):
                raise ValueError(f"schedule {term}: weights must be >= 0")
        return self

    def weights(self, epoch: int) -> dict[str, float]:
        """The weight of every term at ``epoch`` (counted from 1)."""
        out = {}
        for term in TERMS:
            w = 0.0
            for first, value in getattr(self, term):
                if epoch >= first:
                    w = float(value)
            out[term] = w
        return out


# From ``flint.py``'s training loop: lmbd_rec = γ·[epoch > 0], lmbd_expl = β·[epoch > 2], lmbd_spa, lmbd_ent, with
# ``epoch`` running 1..N. CUB's weights were not released; "cub" is the CIFAR-10 schedule (PAPERS.md [R]).
SCHEDULES: dict[str, dict[str, list[Step]]] = {
    "mnist": {"pred": [(1, 1.0)], "rec": [(1, 0.8)], "fid": [(3, 0.5)], "l1": [(3, 0.1)], "ent": [(5, 0.2)]},
    "quickdraw": {"pred": [(1, 1.0)], "rec": [(1, 5.0)], "fid": [(3, 0.1)], "l1": [(2, 0.02), (3, 0.30)],
                  "ent": [(4, 0.1)]},
    "cifar10": {"pred": [(1, 1.0)], "rec": [(1, 2.0)], "fid": [(3, 0.6)], "l1": [(2, 0.001), (3, 0.15)],
                "ent": [(4, 0.2)]},
    "cub": {"pred": [(1, 1.0)], "rec": [(1, 2.0)], "fid": [(3, 0.6)], "l1": [(2, 0.001), (3, 0.15)],
            "ent": [(4, 0.2)]},
}
ScheduleName = Literal["mnist", "quickdraw", "cifar10", "cub"]


def schedule_preset(name: str) -> ScheduleSection:
    if name not in SCHEDULES:
        raise UserError(f"unknown FLINT schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return ScheduleSection.model_validate(SCHEDULES[name])


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
