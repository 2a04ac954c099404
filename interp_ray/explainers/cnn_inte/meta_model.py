"""The CNN-INTE meta-model's pieces (the reconstruction is described in ``cnn_inte.explainer``): reading the fit
batches into rows, the k-means levels and random forests, the cluster summaries, and reading the estimators back from
a checkpoint without trusting anything a CNN-INTE file never holds.

scikit-learn, skops and threadpoolctl are imported inside the functions that use them: importing this module (the
registry scan does, through the package) stays cheap.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from interp_ray.errors import UserError
from interp_ray.explainers.cnn_inte.config import CnnInteConfig

# Types skops does not trust by itself that a CNN-INTE file legitimately holds: the Cython tree inside every
# decision tree. Anything else in a file is refused on load.
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)


@dataclass
class FitRows:
    """The fit data gathered from its batches: one row per input."""

    x: np.ndarray                  # N × width float32
    target: np.ndarray             # N int64: what the forests learn
    label: np.ndarray | None       # N int64: true classes, for the label mix (None when absent)
    ids: np.ndarray                # N str
    images: np.ndarray | None      # N × C × H × W uint8, only when the batches carried images


@dataclass
class Route:
    """The meta-level test data of a batch: cluster memberships, votes and the meta label, row by row."""

    level1: np.ndarray             # N int
    level2: np.ndarray             # N int (index inside the level-1 cluster)
    forest: np.ndarray             # N int: which forest voted (0 for a global forest)
    votes: list[dict[int, float]]  # per row: class -> fraction of the forest's votes
    label: np.ndarray              # N int: the class with most votes


# --- reading batches -----------------------------------------------------------------------------------------------

def iter_batches(data: Any) -> Iterator[Mapping[str, Any]]:
    """One dict, an iterable of dicts, or anything with ``iter_batches`` (a Ray dataset) → its batches."""
    if isinstance(data, Mapping):
        yield data
    elif hasattr(data, "iter_batches"):
        yield from data.iter_batches(batch_format="numpy")
    else:
        yield from data


def activation_matrix(batch: Mapping[str, Any], column: str, width: int | None = None) -> np.ndarray:
    """The ``column`` of a batch as an N × width float32 matrix (any per-row shape is flattened)."""
    if column not in batch:
        raise UserError(f"batch has no activation column {column!r} (it has: {', '.join(sorted(batch))}); "
                        f"CNN-INTE reads the layer it was configured with")
    a = np.asarray(batch[column])
    if a.ndim == 0:
        raise UserError(f"activation column {column!r} is a scalar; expected one row per input")
    x = np.ascontiguousarray(a.reshape(len(a), -1), dtype=np.float32)
    if width is not None and x.shape[1] != width:
        raise UserError(f"activations {column!r} have {x.shape[1]} features per row (row shape {a.shape[1:]}); "
                        f"this CNN-INTE model was fitted on {width} features")
    return x


def to_uint8_images(images: Any) -> np.ndarray:
    """Float images in [0, 1] (or uint8) → uint8, a quarter of the memory for the rows kept during a fit."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def int_column(batch: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    v = np.asarray(batch[name]).reshape(-1).astype(np.int64)
    if len(v) != n:
        raise UserError(f"column {name!r} has {len(v)} rows, the activations have {n}")
    return v


def gather_rows(data: Any, column: str, target: str) -> FitRows:
    """Read every batch of ``data`` and keep its rows (the forests need them all in memory)."""
    xs, ys, labels, ids, images = [], [], [], [], []
    width, seen = None, 0
    for batch in iter_batches(data):
        x = activation_matrix(batch, column, width)
        width = x.shape[1]
        if target not in batch:
            raise UserError(f"fit batch has no {target!r} column (it has: {', '.join(sorted(batch))}); "
                            f"CNN-INTE learns the {target} of every row")
        xs.append(x)
        ys.append(int_column(batch, target, len(x)))
        labels.append(int_column(batch, "label", len(x)) if "label" in batch else None)
        ids.append(np.asarray(batch["id"]).astype(str) if "id" in batch
                   else np.array([f"row/{seen + i}" for i in range(len(x))]))
        images.append(to_uint8_images(batch["image"]) if "image" in batch else None)
        seen += len(x)
    if not xs:
        raise UserError("CNN-INTE got no fit batches")
    return FitRows(
        x=np.concatenate(xs), target=np.concatenate(ys),
        label=None if any(v is None for v in labels) else np.concatenate(labels),
        ids=np.concatenate(ids),
        images=None if any(v is None for v in images) else np.concatenate(images))


# --- the estimators ------------------------------------------------------------------------------------------------

def fit_kmeans(x: np.ndarray, k: int, config: CnnInteConfig, seed: int):
    """k-means (never more clusters than rows); the mini-batch flavour for large inputs or when asked."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    k = max(1, min(k, len(x)))
    minibatch = config.clustering == "minibatch" or (config.clustering == "auto" and len(x) > config.minibatch_above)
    with warnings.catch_warnings():
        # Fewer distinct points than clusters (tiny or duplicated sub-clusters) is harmless here.
        warnings.filterwarnings("ignore", message=".*distinct clusters.*")
        if minibatch:
            return MiniBatchKMeans(n_clusters=k, batch_size=config.minibatch_size, n_init=config.n_init,
                                   random_state=seed).fit(x)
        return KMeans(n_clusters=k, n_init=config.n_init, random_state=seed).fit(x)


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Cap the OpenMP/BLAS threads of the block (scikit-learn's k-means and PCA) when ``threads`` is set."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield


def fit_forest(features: np.ndarray, y: np.ndarray, config: CnnInteConfig, seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=config.n_estimators, max_features=config.max_features,
                                  min_samples_leaf=config.min_samples_leaf, max_samples=config.max_samples,
                                  n_jobs=config.n_jobs,
                                  random_state=seed).fit(features, y)


def nearest_rows(distances: np.ndarray, r: int) -> np.ndarray:
    """Positions of the ``r`` smallest distances, nearest first (stable, so ties keep row order)."""
    return np.argsort(distances, kind="stable")[:r]


def class_mix(values: np.ndarray | None) -> dict[int, int] | None:
    if values is None:
        return None
    classes, counts = np.unique(values, return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts)}


def cluster_summary(rows: np.ndarray, data: FitRows, distances: np.ndarray, r: int) -> dict[str, Any]:
    """Size, class mix and representatives (nearest the centroid) of the cluster holding ``rows``."""
    reps = rows[nearest_rows(distances, r)] if len(rows) else rows
    return {"size": int(len(rows)), "mix": class_mix(data.target[rows]),
            "label_mix": class_mix(data.label[rows]) if data.label is not None else None,
            "representatives": [str(data.ids[i]) for i in reps], "_rows": reps}


# --- reading the estimators back -------------------------------------------------------------------------------------

def load_estimators(blob: bytes, *, source: str) -> dict[str, Any]:
    """Read the skops file, trusting only the types a CNN-INTE file legitimately holds."""
    import skops.io as sio
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.ensemble import RandomForestClassifier

    try:
        untrusted = sio.get_untrusted_types(data=blob)
    except Exception as e:  # skops raises several types for a damaged file
        raise UserError(f"{source} cannot be read ({e})") from None
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise UserError(f"{source} holds types a CNN-INTE model never needs, refused: {', '.join(unexpected)}")
    est = sio.loads(blob, trusted=list(untrusted))
    ok = (isinstance(est, dict) and isinstance(est.get("level1"), (KMeans, MiniBatchKMeans))
          and all(f is None or isinstance(f, RandomForestClassifier) for f in est.get("forests", [None]))
          and len(est.get("forests", [])) > 0)
    if not ok:
        raise UserError(f"{source} does not hold CNN-INTE estimators")
    return est


def int_keys(v: Any) -> Any:
    """JSON turned the class keys of the mixes into strings; turn them back into ints."""
    if isinstance(v, dict):
        return {(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k): int_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [int_keys(x) for x in v]
    return v


__all__ = ["FitRows", "Route", "TRUSTED_TYPES", "activation_matrix", "class_mix", "cluster_summary", "fit_forest",
           "fit_kmeans", "gather_rows", "int_column", "int_keys", "iter_batches", "load_estimators", "nearest_rows",
           "thread_limit", "to_uint8_images"]
