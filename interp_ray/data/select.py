"""Choosing rows and numbering classes: a dataset's ``subset`` option, and its classes matched to a model's.

``subset`` (any loader whose labels are known at load time: image folders, Parquet, WebDataset …)::

    subset: {classes: [cat, dog], per_class: 50, limit: 200}

keeps the rows of the named classes (the class list, and so every label index, stays the whole dataset's), then the
first ``per_class`` rows of each class, then ``limit`` rows spread evenly over what is left — deterministic, so a
store's key (which covers the data options) names exactly these rows.

``align_classes`` is what every job that pairs a dataset with a classifier does first: a folder numbers its classes
alphabetically, a Parquet file in its ClassLabel order, a model in its training data's order. The same names in
another order are translated to the model's indices (said in one line); names the model does not have are refused.
Scoring labels numbered otherwise than the model's outputs gave 24.7% for a model that scores 74% (issue 36).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from interp_ray.data.base import ImageDataset
from interp_ray.errors import UserError

log = logging.getLogger("interp_ray.data")

SUBSET_KEYS = ("classes", "per_class", "limit")


class RowsDataset(ImageDataset):
    """Some rows of ``base`` (``rows``: its indices, in order), nothing copied; ``labels`` (optional) replace the
    base's labels, ``class_names`` its names (a remap), ``note`` what ``describe`` adds about the choice."""

    def __init__(self, base: ImageDataset, rows: np.ndarray | None = None, *, labels: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, note: dict[str, Any] | None = None):
        self.base = base
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.label_map = labels
        self.name, self.split, self.image_shape = base.name, base.split, tuple(base.image_shape)
        self.class_names = list(base.class_names if class_names is None else class_names)
        self.note = dict(note or {})
        if hasattr(base, "labels"):  # known at load time, so a further subset or remap can read them
            self.labels = self._labels(np.arange(len(self)))

    def __len__(self) -> int:
        return len(self.base) if self.rows is None else len(self.rows)

    def _base_rows(self, idx: np.ndarray) -> np.ndarray:
        return idx if self.rows is None else self.rows[idx]

    def _labels(self, idx: np.ndarray) -> np.ndarray:
        labels = np.asarray(self.base.labels)[self._base_rows(idx)]
        return labels if self.label_map is None else self.label_map[labels]

    @property
    def pixel_dtype(self) -> str:  # type: ignore[override]
        return self.base.pixel_dtype

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        return self._rows(indices, self.base.get_batch)

    def get_pixel_batch(self, indices) -> dict[str, np.ndarray]:
        return self._rows(indices, self.base.get_pixel_batch)

    def _rows(self, indices, get: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        batch = get(self._base_rows(idx))
        if self.label_map is not None:
            batch["label"] = self.label_map[np.asarray(batch["label"], dtype=np.int64)]
        return batch

    def extra_columns(self) -> list[str]:
        return self.base.extra_columns()

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "rows": len(self), "classes": list(self.class_names), **self.note}


def parse_subset(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not spec or set(spec) - set(SUBSET_KEYS):
        raise UserError(f"subset must be a mapping of {', '.join(SUBSET_KEYS)}, got {spec!r}")
    out: dict[str, Any] = {}
    if spec.get("classes") is not None:
        classes = spec["classes"]
        classes = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
        if not classes:
            raise UserError("subset.classes is empty; name at least one class")
        out["classes"] = classes
    for key in ("per_class", "limit"):
        if spec.get(key) is not None:
            value = spec[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"subset.{key} must be a positive integer, got {value!r}")
            out[key] = int(value)
    return out


def apply_subset(dataset: ImageDataset, spec: Any) -> ImageDataset:
    """The rows ``spec`` (see the module docstring) chooses; a dataset without load-time labels is a UserError."""
    spec = parse_subset(spec)
    if not hasattr(dataset, "labels"):
        raise UserError(f"dataset {dataset.name!r} does not know its labels before reading its rows, so it takes no "
                        f"subset option (image_folder, parquet and webdataset do)")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    keep = np.arange(len(labels))
    if "classes" in spec:
        unknown = [c for c in spec["classes"] if c not in dataset.class_names]
        if unknown:
            raise UserError(f"subset.classes: {', '.join(unknown)} not in the dataset's classes; valid: "
                            f"{', '.join(dataset.class_names)}")
        wanted = [dataset.class_names.index(c) for c in spec["classes"]]
        keep = keep[np.isin(labels, wanted)]
    if "per_class" in spec:
        counts: dict[int, int] = {}
        chosen = []
        for i in keep.tolist():
            counts[labels[i]] = counts.get(labels[i], 0) + 1
            if counts[labels[i]] <= spec["per_class"]:
                chosen.append(i)
        keep = np.asarray(chosen, dtype=np.int64)
    if "limit" in spec and spec["limit"] < len(keep):
        keep = keep[np.linspace(0, len(keep) - 1, spec["limit"]).round().astype(np.int64)]
    if not len(keep):
        raise UserError(f"subset {spec} leaves no rows of {dataset.name}/{dataset.split}")
    return RowsDataset(dataset, keep, note={"subset": spec})


def unnamed(names: Sequence[str]) -> bool:
    """Class names that are only the indices as text (a loader that found no names)."""
    return list(names) == [str(i) for i in range(len(names))]


def align_classes(dataset: ImageDataset, model_classes: Sequence[str], *, what: str) -> ImageDataset:
    """``dataset`` with labels in ``model_classes``' numbering: itself when they already agree, a remapped view (one
    log line) when its names are the model's in another order (or some of them), a UserError when it has names the
    model lacks. Unnamed classes (indices as text) on either side are taken as the model's indices."""
    ours, theirs = list(dataset.class_names), list(model_classes)
    if ours == theirs[:len(ours)]:
        return dataset
    if (unnamed(ours) or unnamed(theirs)) and len(ours) <= len(theirs):
        # one side knows its classes only by index (a Parquet file without ClassLabel names, a model imported
        # without names): positions are all there is to go by
        log.info("%s: %s classes are unnamed (indices), taken as the model's indices", what,
                 "the dataset's" if unnamed(ours) else "the model's")
        return dataset
    missing = [c for c in ours if c not in theirs]
    if missing:
        raise UserError(f"{what}: the dataset's classes {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} "
                        f"are not among the model's ({', '.join(theirs[:10])}{' …' if len(theirs) > 10 else ''}); "
                        f"give the dataset the model's class names (class_names / classes.txt) or use its model")
    mapping = np.asarray([theirs.index(c) for c in ours], dtype=np.int64)
    log.warning("%s: the dataset numbers its classes otherwise than the model; labels are translated to the model's "
                "indices (%s)", what, ", ".join(f"{c} {i}→{j}" for i, (c, j) in enumerate(zip(ours, mapping))
                                                if i != j)[:500])
    return RowsDataset(dataset, labels=mapping, class_names=theirs, note={"labels_remapped_from": ours})
