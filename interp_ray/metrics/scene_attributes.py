"""Learned attributes against the scenes dataset's ground truth: each learned attribute (a column of activations,
e.g. FLINT's Φ) matched to the ground-truth attribute value it tracks best. Arrays in, rows out: any method whose
attributes are columns can be scored, and nothing here knows a method."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def ground_truth_indicators(attributes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """N×4 attribute indices (scenes) → N×V 0/1 indicators, one column per attribute value, and their names."""
    from interp_ray.data.scenes import ATTRIBUTE_KINDS, ATTRIBUTE_VALUES

    cols, names = [], []
    for k, kind in enumerate(ATTRIBUTE_KINDS):
        for v, value in enumerate(ATTRIBUTE_VALUES[kind]):
            cols.append((np.asarray(attributes)[:, k] == v).astype(np.float64))
            names.append(f"{kind}={value}")
    return np.stack(cols, 1), names


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``a`` (N×J) with every column of ``b`` (N×V); NaN for constant ones."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a.T @ b) / np.outer(na, nb)


def match_attributes(phi: np.ndarray, indicators: np.ndarray, names: Sequence[str],
                     attribute_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """For each learned attribute, the ground-truth attribute value it tracks best (highest Pearson correlation
    over the rows given), the correlation, and the runner-up. A constant φ_j (a dead attribute) matches nothing."""
    corr = correlation_matrix(phi, indicators)
    rows = []
    for j in range(corr.shape[0]):
        name = attribute_names[j] if attribute_names else f"phi_{j}"
        if not np.isfinite(corr[j]).any():
            rows.append({"attribute": name, "match": None, "corr": None, "second": None, "second_corr": None,
                         "phi_mean": float(np.mean(phi[:, j]))})
            continue
        order = np.argsort(-np.nan_to_num(corr[j], nan=-np.inf))
        rows.append({"attribute": name, "match": names[order[0]], "corr": float(corr[j, order[0]]),
                     "second": names[order[1]], "second_corr": float(corr[j, order[1]]),
                     "phi_mean": float(np.mean(phi[:, j]))})
    return rows


def scenes_attribute_table(activations: np.ndarray, attributes: np.ndarray,
                           attribute_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Match every learned attribute (a column of ``activations``, N×J) to the ground-truth attribute value it
    correlates with best over the same N rows' scenes ``attributes`` (N×4 value indices)."""
    ind, names = ground_truth_indicators(attributes)
    return match_attributes(activations, ind, names, attribute_names)
