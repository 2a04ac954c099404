"""FLINT's interpretations and their metrics (paper §3; the authors' ``analyze_img``, ``collect_g_data``,
``sparse_sense``):

* contribution α_{j,c,x} = φ_j(x) · w_{j,c}, with c = ĉ(x), the class g predicts (or a requested target);
* local relevance r_{j,x} = α_{j,ĉ,x} / max_i |α_{i,ĉ,x}|; local interpretation = {φ_j : r_{j,x} > 1/τ};
* global relevance r_{j,c} = mean of r_{j,x} over x with ĉ(x) = c (a random training subset of
  ``relevance_samples`` rows, 1,020 as in the code); global interpretation = {(c, φ_j) : r_{j,c} > 1/τ};
* conciseness CNS(τ) = mean_x |{j : r_{j,x} > 1/τ}|, in two readings: ``absolute=True`` counts |α_j| > max|α|/τ
  (the demo notebook), ``absolute=False`` counts α_j > max α / τ (``sparse_sense`` in ``flint.py``);
* maximum-activating samples MAS(c, φ_j, l): the top-l samples of true class c by φ_j (``max_activating``; per
  relevant pair of the global interpretation: ``pair_rows``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from interp_ray.errors import UserError
from interp_ray.explainers.flint.config import TAUS
from interp_ray.explainers.flint.model import FlintModel, forward_step, image_steps

# ---------------------------------------------------------------------------------------------------------------
# Collection: the arrays every interpretation reads
# ---------------------------------------------------------------------------------------------------------------

def collect(model: FlintModel, loader, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Run ``model`` (eval mode) over a loader of (images, labels): phi, logits of f and of h, labels."""
    return collect_steps(model, image_steps(loader), device)


@torch.no_grad()
def collect_steps(model: FlintModel, steps, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """``collect`` over (x, labels, taps) steps: ``taps`` None runs f on x; post hoc, f's taps from the store."""
    was = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"phi": [], "logits": [], "interp_logits": [], "labels": []}
    try:
        for images, labels, taps in steps:
            o = forward_step(model, images.to(device), taps, device)
            out["phi"].append(o.phi.cpu().numpy())
            out["logits"].append(o.logits.cpu().numpy())
            out["interp_logits"].append(o.interp_logits.cpu().numpy())
            out["labels"].append(labels.numpy())
    finally:
        model.train(was)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# Interpretation: relevance, local / global interpretations, conciseness
# ---------------------------------------------------------------------------------------------------------------

def contributions(phi: np.ndarray, weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """α_{j,c,x} = φ_j(x) · w_{j,c} for each row's class c; ``weight`` is h's C×J matrix. N×J."""
    phi, weight = np.asarray(phi, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    return phi * weight[np.asarray(classes, dtype=np.int64)]


def relevance(alpha: np.ndarray) -> np.ndarray:
    """r_{j,x} = α_{j,x} / max_i |α_{i,x}| (a row of zeros stays zeros)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    scale = np.abs(alpha).max(axis=1, keepdims=True)
    return np.divide(alpha, scale, out=np.zeros_like(alpha), where=scale > 0)


def local_interpretation(r_row: np.ndarray, tau: float) -> list[tuple[int, float]]:
    """[(j, r_j)] for r_j > 1/τ, most relevant first."""
    r_row = np.asarray(r_row)
    idx = np.flatnonzero(r_row > 1.0 / tau)
    return [(int(j), float(r_row[j])) for j in idx[np.argsort(-r_row[idx], kind="stable")]]


def global_relevance(r: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """r_{j,c} = mean of r_{j,x} over rows whose (predicted) class is c; C×J (0 for a class no row has)."""
    r, classes = np.asarray(r, dtype=np.float64), np.asarray(classes, dtype=np.int64)
    out = np.zeros((num_classes, r.shape[1]))
    for c in range(num_classes):
        rows = classes == c
        if rows.any():
            out[c] = r[rows].mean(0)
    return out


def global_interpretation(rel: np.ndarray, tau: float) -> list[tuple[int, int, float]]:
    """[(c, j, r_{j,c})] with r_{j,c} > 1/τ, by class then relevance (highest first)."""
    out = []
    for c in range(rel.shape[0]):
        idx = np.flatnonzero(rel[c] > 1.0 / tau)
        out += [(c, int(j), float(rel[c, j])) for j in idx[np.argsort(-rel[c, idx], kind="stable")]]
    return out


def conciseness(alpha: np.ndarray, tau: float, *, absolute: bool = True) -> float:
    """CNS(τ): mean number of attributes per row above 1/τ of the row's largest contribution.

    absolute=True: |α_j| > max_i |α_i| / τ (the demo notebook); False: α_j > max_i α_i / τ (``sparse_sense``).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if not len(alpha):
        return float("nan")
    a = np.abs(alpha) if absolute else alpha
    return float((a > a.max(axis=1, keepdims=True) / tau).sum(1).mean())


def interpretation_metrics(data: dict[str, np.ndarray], weight: np.ndarray, taus: Sequence[float]) -> dict[str, Any]:
    """Accuracy of f and g, fidelity, and CNS(τ) in both readings from ``collect``'s arrays."""
    pf, pg = data["logits"].argmax(1), data["interp_logits"].argmax(1)
    alpha = contributions(data["phi"], weight, pg)
    out: dict[str, Any] = {"accuracy_f": float((pf == data["labels"]).mean()),
                           "accuracy_g": float((pg == data["labels"]).mean()), "fidelity": float((pf == pg).mean()),
                           "samples": int(len(pf))}
    for tau in taus:
        out[f"cns_{tau:g}"] = conciseness(alpha, tau, absolute=True)
        out[f"cns_code_{tau:g}"] = conciseness(alpha, tau, absolute=False)
    out["active_attributes"] = int((data["phi"].std(0) > 1e-6).sum()) if len(pf) else 0
    return out


def compute_global_relevance(model: FlintModel, ds, *, samples: int, seed: int = 21, batch_size: int = 256,
                             device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, dict]:
    """Global relevance (C×J) on a random subset of ``samples`` rows of ``ds``; written into the model's buffer.

    Also returns the subset's indices and its ``collect`` arrays (MAS are chosen from the same subset, as in the code).
    """
    idx = relevance_subset(len(ds), samples, seed)
    data = collect(model, _subset_loader(ds, idx, batch_size), device)
    return store_global_relevance(model, data), idx, data


def relevance_subset(rows: int, samples: int, seed: int = 21) -> np.ndarray:
    """The sorted row indices global relevance and MAS are computed on (the code's random training subset)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(rows)[:samples])


def store_global_relevance(model: FlintModel, data: dict[str, np.ndarray]) -> np.ndarray:
    """Global relevance (C×J) from ``collect``-style arrays of the subset, written into the model's buffer."""
    pg = data["interp_logits"].argmax(1)
    rel = global_relevance(relevance(contributions(data["phi"], interpreter_weight(model), pg)), pg, model.num_classes)
    model.global_relevance.copy_(torch.as_tensor(rel, dtype=model.global_relevance.dtype))
    return rel


def interpreter_weight(model: FlintModel) -> np.ndarray:
    return model.interpreter.fc.weight.detach().cpu().numpy()


def _subset_loader(ds, idx: np.ndarray, batch_size: int):
    sampler = list(int(i) for i in idx)
    return ds.loader(batch_size, sampler=sampler)


def max_activating(phi: np.ndarray, labels: np.ndarray | None, j: int, *, cls: int | None = None,
                   count: int = 3) -> np.ndarray:
    """Row indices of the ``count`` largest φ_j, among rows of class ``cls`` when given (MAS(c, φ_j, l))."""
    rows = np.arange(len(phi)) if cls is None else np.flatnonzero(np.asarray(labels) == cls)
    order = np.argsort(-np.asarray(phi)[rows, j], kind="stable")
    return rows[order[:count]]


def pair_rows(phi: np.ndarray, labels: np.ndarray, rel: np.ndarray, tau: float, *, count: int,
              max_pairs: int) -> list[tuple[int, int, np.ndarray]]:
    """[(c, j, rows)]: the relevant pairs of the global interpretation at ``tau`` (at most ``max_pairs``), each with
    its MAS(c, φ_j, l): the ``count`` rows of true class c with the largest φ_j (rows of ``phi``)."""
    out = []
    for c, j, _ in global_interpretation(rel, tau)[:max_pairs]:
        rows = max_activating(phi, labels, j, cls=c, count=count)
        if len(rows) == count:   # a class with fewer rows in the subset than l has no full set: attribute tiles
            out.append((c, j, rows))
    return out


def evaluate_model(model: FlintModel, ds, *, taus: Sequence[float] = TAUS, batch_size: int = 512) -> dict[str, Any]:
    """Test metrics of a trained FLINT (an explainer's ``.flint``): accuracy of f and g, fidelity, CNS(τ) (both
    readings)."""
    data = collect(model, ds.loader(batch_size))
    return interpretation_metrics(data, interpreter_weight(model), taus)


@torch.no_grad()
def attributes_with_ground_truth(model: FlintModel, ds, *, column: str = "attributes",
                                 batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Φ(x) (N×J) over every row of ``ds`` beside the rows' ground-truth ``column`` (the scenes dataset's attribute
    indices): the two arrays ``interp_ray.metrics.scene_attributes.scenes_attribute_table`` matches."""
    idx = np.arange(len(ds))
    phis, truth = [], []
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(ds), batch_size):
            b = ds.get_batch(idx[lo:lo + batch_size])
            if column not in b:
                raise UserError(f"dataset {ds.name!r} has no ground-truth {column}")
            phis.append(model.attributes(torch.from_numpy(np.ascontiguousarray(b["image"]))).numpy())
            truth.append(b[column])
    finally:
        model.train(was)
    return np.concatenate(phis), np.concatenate(truth)
