"""Saliency metrics: pointing game, weakly-supervised localisation error, deletion and insertion AUC.

Conventions: a saliency map is H×W (higher = more relevant); boxes are ``x0, y0, x1, y1`` in pixels with x1, y1
exclusive (the scenes generator's convention); ``box_labels`` gives each box's class, -1 for an absent box.

* Pointing game (Zhang et al., ECCV'16; Du et al. Table 3): a hit if the map's maximum lies in a ground-truth box of
  the target class, or within ``tolerance`` pixels of one (TorchRay uses 15 px; the paper gives none).
* Localisation error (Fong & Vedaldi, ICCV'17; Du et al. Table 1): keep pixels above α·mean(map), take the tightest
  box around all of them, success if IoU > 0.5 with any ground-truth box of the class; error = 1 − success rate.
* Empty maps: the share of maps that rank no pixel above another (constant, e.g. all zero). Such a map says
  nothing, and every ranking metric above scores it by tie-breaking, so a method's share is reported beside them
  (Grad-CAM's ReLU of the channel-weighted sum gives all-zero maps when that sum is negative everywhere).
* Deletion / insertion (Petsiuk et al., BMVC'18): remove (insert) pixels from most to least salient and follow the
  class probability; the area under that curve, over the fraction of pixels changed, in [0, 1]. Deletion: lower is
  better (the map found what the model uses); insertion: higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interp_ray.errors import UserError
from interp_ray.imageops import paper_blur

# ---------------------------------------------------------------------------------------------------------------
# Empty maps
# ---------------------------------------------------------------------------------------------------------------


def empty_maps(maps: np.ndarray | Sequence[np.ndarray], *, rtol: float = 1e-6) -> np.ndarray:
    """Per map, whether it is constant: its range is at most ``rtol`` of its largest magnitude (all zero included)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise UserError(f"maps must be N×H×W, got shape {m.shape}")
    if not len(m):
        return np.zeros(0, dtype=bool)
    flat = m.reshape(len(m), -1)
    spread = flat.max(1) - flat.min(1)
    scale = np.abs(flat).max(1)
    return spread <= rtol * np.maximum(scale, 1e-30)


def empty_share(maps: np.ndarray | Sequence[np.ndarray]) -> float:
    """The fraction of ``maps`` that are constant (``empty_maps``); 0 for no maps."""
    empty = empty_maps(maps)
    return float(empty.mean()) if len(empty) else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Pointing game
# ---------------------------------------------------------------------------------------------------------------


def _check_map(saliency: np.ndarray) -> np.ndarray:
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise UserError(f"a saliency map must be H×W, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise UserError("saliency map has NaN or infinite values")
    return s


def _class_boxes(boxes: np.ndarray, box_labels: np.ndarray, target: int) -> np.ndarray:
    boxes = np.asarray(boxes).reshape(-1, 4)
    labels = np.asarray(box_labels).reshape(-1)
    if len(boxes) != len(labels):
        raise UserError(f"{len(boxes)} boxes but {len(labels)} box labels")
    return boxes[(labels == target) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def saliency_peak(saliency: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum; the first in row-major order on ties."""
    s = _check_map(saliency)
    r, c = np.unravel_index(int(np.argmax(s)), s.shape)
    return int(r), int(c)


def point_in_box(point: tuple[int, int], box: Sequence[int], tolerance: float = 0.0) -> bool:
    """Whether pixel (row, col) lies in the box or within ``tolerance`` pixels (Euclidean, pixel to pixel) of it."""
    r, c = point
    x0, y0, x1, y1 = box
    dx = max(x0 - c, 0, c - (x1 - 1))  # distance from the column to the box's pixel columns x0..x1-1
    dy = max(y0 - r, 0, r - (y1 - 1))
    return dx * dx + dy * dy <= tolerance * tolerance


def pointing_hit(saliency: np.ndarray, boxes: np.ndarray, box_labels: np.ndarray, target: int, *,
                 tolerance: float = 0.0) -> bool:
    """The pointing game for one image: is the maximum inside (or within ``tolerance`` px of) a box of ``target``?"""
    if tolerance < 0:
        raise UserError(f"tolerance must be >= 0, got {tolerance}")
    peak = saliency_peak(saliency)
    return any(point_in_box(peak, b, tolerance) for b in _class_boxes(boxes, box_labels, target))


def pointing_game(maps: Sequence[np.ndarray], boxes: np.ndarray, box_labels: np.ndarray, targets: Sequence[int], *,
                  tolerance: float = 0.0) -> dict[str, float]:
    """Accuracy over images (``accuracy``) and the mean of per-class accuracies (``class_mean``, as in Du et al.)."""
    hits = np.array([pointing_hit(m, b, bl, int(t), tolerance=tolerance)
                     for m, b, bl, t in zip(maps, boxes, box_labels, targets, strict=True)], dtype=bool)
    return {"accuracy": float(hits.mean()) if len(hits) else float("nan"),
            "class_mean": _class_mean(hits, np.asarray(targets)), "n": int(len(hits))}


def class_discrimination(maps_a: Sequence[np.ndarray], maps_b: Sequence[np.ndarray],
                         stage1: Sequence[np.ndarray] | None, boxes: np.ndarray, box_labels: np.ndarray,
                         *, cover: float = 0.5) -> dict[str, float]:
    """Du et al.'s class-discrimination check on two-object images (object 0 of class A, object 1 of class B, as the
    scenes' ``boxes`` / ``box_labels`` give them): the share of images in which A's map peaks in A's box **and** B's
    in B's (the two maps pick different objects), and, with ``stage1`` (GFI's class-free inversion masks), the share
    in which that mask reaches ``cover`` inside both boxes."""
    a, b = box_labels[:, 0], box_labels[:, 1]
    both = [pointing_hit(maps_a[i], boxes[i, :1], box_labels[i, :1], int(a[i]))
            and pointing_hit(maps_b[i], boxes[i, 1:2], box_labels[i, 1:2], int(b[i])) for i in range(len(a))]
    out = {"scenes": len(a), "both_peaks_in_own_box": float(np.mean(both)) if both else float("nan")}
    if stage1 is not None:
        out["stage1_covers_both"] = float(np.mean([all(s[y0:y1, x0:x1].max() >= cover for x0, y0, x1, y1 in bx[:2])
                                                   for s, bx in zip(stage1, boxes)])) if len(a) else float("nan")
    return out


def _class_mean(values: np.ndarray, classes: np.ndarray) -> float:
    if not len(values):
        return float("nan")
    return float(np.mean([values[classes == c].mean() for c in np.unique(classes)]))


# ---------------------------------------------------------------------------------------------------------------
# Localisation error
# ---------------------------------------------------------------------------------------------------------------


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """IoU of two boxes (x0, y0, x1, y1, exclusive ends), in pixel counts."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def saliency_box(saliency: np.ndarray, alpha: float) -> np.ndarray:
    """int (4,): the tightest box around every pixel with value >= α·mean(map) (α = 0 keeps the whole image).

    ``>=`` so that a map that is all equal still gives a box (the whole image) rather than none."""
    s = _check_map(saliency)
    keep = s >= alpha * s.mean()
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    if not len(rows):  # only possible with negative values; keep the peak
        r, c = saliency_peak(s)
        return np.array([c, r, c + 1, r + 1])
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])


def localisation_hit(saliency: np.ndarray, boxes: np.ndarray, box_labels: np.ndarray, target: int, *,
                     alpha: float, iou_threshold: float = 0.5) -> bool:
    """Success if the α·mean box has IoU > ``iou_threshold`` with any ground-truth box of the class."""
    pred = saliency_box(saliency, alpha)
    return any(box_iou(pred, b) > iou_threshold for b in _class_boxes(boxes, box_labels, target))


def localisation_error(maps: Sequence[np.ndarray], boxes: np.ndarray, box_labels: np.ndarray,
                       targets: Sequence[int], *, alpha: float, iou_threshold: float = 0.5) -> float:
    """1 − the fraction of images whose α·mean box overlaps a box of the class with IoU > 0.5."""
    hits = [localisation_hit(m, b, bl, int(t), alpha=alpha, iou_threshold=iou_threshold)
            for m, b, bl, t in zip(maps, boxes, box_labels, targets, strict=True)]
    return 1.0 - float(np.mean(hits)) if hits else float("nan")


DEFAULT_ALPHAS = tuple(np.round(np.arange(0.0, 10.01, 0.5), 2))  # Du et al.: α ∈ {0.0, 0.5, …, 10.0}


def tune_alpha(maps: Sequence[np.ndarray], boxes: np.ndarray, box_labels: np.ndarray, targets: Sequence[int], *,
               alphas: Sequence[float] = DEFAULT_ALPHAS) -> tuple[float, float]:
    """(α, error) with the lowest localisation error on these (tuning) images; the smallest α on ties."""
    errors = [localisation_error(maps, boxes, box_labels, targets, alpha=a) for a in alphas]
    best = int(np.argmin(errors))
    return float(alphas[best]), float(errors[best])


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CausalCurves:
    """Probability of the target class after changing each fraction of the pixels, per image."""

    fractions: np.ndarray   # (S,) from 0 to 1
    deletion: np.ndarray    # (N, S)
    insertion: np.ndarray   # (N, S)

    @property
    def deletion_auc(self) -> np.ndarray:
        return _auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        return _auc(self.fractions, self.insertion)


def _auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area over [0, 1] per row."""
    widths = np.diff(fractions)
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * widths).sum(1)


def pixel_order(saliency: torch.Tensor) -> torch.Tensor:
    """N×(H·W) pixel indices from most to least salient; ties keep row-major order (stable sort)."""
    return torch.sort(saliency.flatten(1), dim=1, descending=True, stable=True).indices


def _blend_steps(start: torch.Tensor, end: torch.Tensor, order: torch.Tensor, counts: Sequence[int]
                 ) -> torch.Tensor:
    """For each count k: ``start`` with its k first pixels (in ``order``) taken from ``end``: S×N×C×H×W."""
    n, c, h, w = start.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(n, -1))  # position of each pixel
    out = []
    for k in counts:
        take = (rank < k).view(n, 1, h, w)
        out.append(torch.where(take, end, start))
    return torch.stack(out)


def causal_curves(model: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray | torch.Tensor,
                  saliency: np.ndarray | torch.Tensor, targets: Sequence[int], *, steps: int = 32,
                  deletion_baseline: str = "zero", insertion_baseline: str = "blur",
                  batch_size: int = 256) -> CausalCurves:
    """Deletion and insertion curves (Petsiuk et al.): deletion replaces the most salient pixels by the deletion
    baseline (black, as in RISE), insertion starts from the insertion baseline (a blurred copy, as in RISE) and puts
    the most salient pixels back. ``model`` maps N×C×H×W to logits; evaluated in ``steps + 1`` points."""
    # numpy input is copied: a map read from a store is a read-only view, which torch must not share
    x = images.float() if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, dtype=np.float32))
    s = (saliency.float() if isinstance(saliency, torch.Tensor)
         else torch.from_numpy(np.array(saliency, dtype=np.float32)))
    if x.ndim != 4 or s.shape != (x.shape[0], *x.shape[2:]):
        raise UserError(f"need images N×C×H×W and maps N×H×W; got {tuple(x.shape)} and {tuple(s.shape)}")
    if steps < 1:
        raise UserError("steps must be >= 1")
    device = _device_of(model)
    x, s = x.to(device), s.to(device)
    t = torch.from_numpy(np.array(targets, dtype=np.int64)).to(device)
    hw = x.shape[2] * x.shape[3]
    counts = [round(hw * i / steps) for i in range(steps + 1)]
    order = pixel_order(s)
    deletion = _curve(model, _blend_steps(x, _baseline(x, deletion_baseline), order, counts), t, batch_size)
    insertion = _curve(model, _blend_steps(_baseline(x, insertion_baseline), x, order, counts), t, batch_size)
    return CausalCurves(np.array(counts) / hw, deletion, insertion)


def _baseline(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if kind == "blur":
        return paper_blur(x)
    raise UserError(f"unknown baseline {kind!r}; valid: zero, mean, blur")


@torch.no_grad()
def _curve(model, steps_images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> np.ndarray:
    """Target probability for every (step, image): returns N×S."""
    s, n = steps_images.shape[:2]
    flat = steps_images.reshape(s * n, *steps_images.shape[2:])
    probs = torch.cat([F.softmax(model(flat[i:i + batch_size]), 1) for i in range(0, len(flat), batch_size)])
    return probs.gather(1, targets.repeat(s)[:, None]).reshape(s, n).T.cpu().numpy()


def _device_of(model) -> torch.device:
    params = getattr(model, "parameters", None)
    p = next(params(), None) if callable(params) else None
    return p.device if p is not None else torch.device("cpu")
