"""Activation tables: what InterpNET learns from. Store batches (dicts of numpy arrays) are gathered into an
in-memory ``ActivationTable`` (each column pooled as it arrives), and ``FeatureStats`` takes the statistics the
explainer is fixed by in one streaming pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from interp_ray.errors import UserError
from interp_ray.explainers._captioning.training import sentence_rows


def pool_activation(arr: np.ndarray, how: str = "mean") -> np.ndarray:
    """One row per input, float32 N×D: conv maps (N×C×H×W…) are averaged over space (``mean``) or flattened."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim > 2:
        a = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2) if how == "mean" else a.reshape(a.shape[0], -1)
    return np.ascontiguousarray(a)


@dataclass
class ActivationTable:
    """Activation columns (pooled to N×D float32), labels, ids and reference sentences of one split, in memory."""

    ids: np.ndarray
    labels: np.ndarray
    columns: dict[str, np.ndarray]
    sentences: list[list[str]] | None = None
    prediction: np.ndarray | None = None   # the activation model's own prediction (store mode's classifier)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> "ActivationTable":
        idx = np.asarray(idx)
        return ActivationTable(self.ids[idx], self.labels[idx], {k: v[idx] for k, v in self.columns.items()},
                               None if self.sentences is None else [self.sentences[i] for i in idx],
                               None if self.prediction is None else self.prediction[idx])

    def all_sentences(self) -> list[str]:
        return [s for row in (self.sentences or []) for s in row]


def collect(batches: Iterable[Mapping[str, Any]] | Mapping[str, Any], columns: Sequence[str], *,
            pool: str = "mean", need_sentences: bool = False) -> ActivationTable:
    """Concatenate activation batches (dicts of arrays, e.g. from the activation store) into an ``ActivationTable``.

    Only ``columns`` (plus id, label, prediction, sentences) are kept, each pooled as it arrives, so a store with
    big conv maps never sits in memory whole.
    """
    if isinstance(batches, ActivationTable):
        return batches
    if isinstance(batches, Mapping):
        batches = [batches]
    ids, labels, preds, sents = [], [], [], []
    cols: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    seen = 0
    for b in batches:
        missing = [c for c in columns if c not in b]
        if missing:
            raise UserError(f"activation batch lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(b))}")
        n = len(b[columns[0]])
        for c in columns:
            cols[c].append(pool_activation(b[c], pool) if c != "probabilities"
                           else np.asarray(b[c], dtype=np.float32))
        ids.append(np.asarray(b["id"]).astype(str) if "id" in b else np.arange(seen, seen + n).astype(str))
        seen += n
        labels.append(np.asarray(b["label"], dtype=np.int64) if "label" in b else np.full(n, -1, dtype=np.int64))
        if "prediction" in b:
            preds.append(np.asarray(b["prediction"], dtype=np.int64))
        if "sentences" in b:
            sents.extend(sentence_rows(b["sentences"], n))
        elif need_sentences:
            raise UserError("activation batch has no 'sentences' column: InterpNET learns from reference sentences")
    if not ids:
        raise UserError("no activation batches: the data is empty")
    n_rows = sum(len(i) for i in ids)
    return ActivationTable(
        ids=np.concatenate(ids), labels=np.concatenate(labels),
        columns={c: np.concatenate(v) for c, v in cols.items()},
        sentences=sents if len(sents) == n_rows else None,
        prediction=np.concatenate(preds) if len(preds) == len(ids) else None)


ROWS_PER_BATCH = 256   # rows per batch when training from an in-memory table (the job streams its own batches)


def table_columns(t: ActivationTable, columns: Sequence[str]) -> dict[str, Any]:
    """An ``ActivationTable`` as the row-batch columns the trainers read."""
    out: dict[str, Any] = {c: t.columns[c] for c in columns}
    out.update({"id": t.ids, "label": t.labels})
    if t.sentences is not None:
        out["sentences"] = list(t.sentences)
    return out


class FeatureStats:
    """Streaming statistics of the training rows: row count, widths of every column, the largest label, and h_0's
    mean and (unbiased) standard deviation, accumulated in float64 batch by batch."""

    def __init__(self):
        self.rows, self.max_label, self.dims = 0, -1, {}
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None

    def add(self, t: ActivationTable, feature: str) -> None:
        if not len(t):
            return
        dims = {c: int(v.shape[1]) for c, v in t.columns.items()}
        if self.dims and dims != self.dims:
            raise UserError(f"activation widths {dims} differ between batches ({self.dims})")
        self.dims = dims
        x = np.asarray(t.columns[feature], dtype=np.float64)
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)
        self.sumsq = (x * x).sum(0) if self.sumsq is None else self.sumsq + (x * x).sum(0)
        self.rows += len(x)
        self.max_label = max(self.max_label, int(np.max(t.labels)))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.rows
        var = np.maximum(self.sumsq - self.rows * mean * mean, 0.0) / max(self.rows - 1, 1)
        return (torch.as_tensor(mean, dtype=torch.float32),
                torch.as_tensor(np.sqrt(var), dtype=torch.float32).clamp_min(1e-6))
