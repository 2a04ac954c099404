"""CNN-INTE (Liu, Wang & Matwin, IJCNN 2018): explain one hidden layer of a CNN by meta-learning over it.

The paper's full text could not be read (shared/PAPERS.md §4), so the algorithm below is a **reconstruction [R]**;
every open choice is a field of ``CnnInteConfig`` and the defaults are the ones measured best (benchmarks/cnn_inte.md).

Fitting, from the activations A of one layer (the store's column ``layer``, flattened per row) and a target y
(``target="prediction"``: the CNN's predicted class, so the meta-model is judged by its fidelity to the CNN):

1. **Level-1 clustering** — k-means with ``k1`` clusters on A (scikit-learn ``KMeans``; ``MiniBatchKMeans`` above
   ``minibatch_above`` rows, or as ``clustering`` says).
2. **Level-2 clustering** — inside each level-1 cluster, k-means with ``min(k2, rows)`` clusters.
3. **Meta-level training data** — each row described by where it sits in that two-level structure: its distances to
   the ``k1`` level-1 centroids and to all level-2 centroids, plus (``features``) its activations projected onto
   their top ``pca_components`` principal components. Why not the raw activations alone: a forest's axis-aligned
   splits approximate the CNN's oblique (linear-in-the-layer) decision boundary poorly; distances to prototypes are
   oblique, and on digits they cut the disagreements with the CNN. Why PCA rather than raw activations: the forest's
   cost then does not grow with the layer's width, only with the rows.
4. **Base learners** — a ``RandomForestClassifier`` on the meta-level training data: one for all rows
   (``forest_scope="global"``, default) or one per level-1 cluster (``"level1"``, the other reading of the paper; on
   digits it loses ~2.5 points of fidelity, because a test row routed to a cluster whose training rows never carried
   the CNN's class cannot be right).
5. **Meta-level test data and final prediction** — for a new row: its level-1 cluster, its level-2 cluster, the
   forest's votes (``predict_proba``: the mean over trees of the leaf class fractions; with fully grown trees these
   are the trees' votes) and the label, the class with most votes (= ``forest.predict``). The CNN's own prediction is
   never used to produce the label, so fidelity is a real measurement, not a pass-through.

Global interpretation (``global_interpretation``, ``global_figure``): every level-1/level-2 cluster's size, class mix
(of the target, and of the true labels when given) and its representative training rows (those nearest the
centroid, with their images when the fit batches carried an ``image`` column). Local interpretation (``explain``,
``route_figure``/``route_diagram``): the route level-1 → level-2 → votes → label, drawn as a PNG.

Data: ``fit`` takes one batch dict or any iterable of them (a list, a generator, the activation store's batches, a
``ray.data.Dataset``) and reads it batch by batch, but keeps the rows: the random forest needs every row of its
scope in memory (N × width float32, 245 MB for 60k × 1,024). The rows are concatenated before any estimator sees
them, so the result does not depend on how the input was cut into batches.

Checkpoint (``interp_ray.checkpoint`` format): ``config.json`` holds the configuration, widths, classes and the
cluster summaries; ``weights.safetensors`` the representative images (uint8); ``estimators.skops`` the scikit-learn
estimators, written with skops — never pickle. Loading lists the types the file needs and refuses any beyond the
built-in scikit-learn/numpy ones skops trusts plus the decision-tree structure ``sklearn.tree._tree.Tree``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from interp_ray.errors import UserError
from interp_ray.explainers.base import Explainer, Explanation, register

METHOD = "cnn_inte"
KIND = "explainer"
ESTIMATORS_FILE = "estimators.skops"
# Types skops does not trust by itself that a CNN-INTE file legitimately holds: the Cython tree inside every
# decision tree. Anything else in a file is refused on load.
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)
FEATURE_SETS = ("distances", "pca+distances", "activations+distances", "activations")


class CnnInteConfig(BaseModel):
    """How a CNN-INTE meta-model is built. [R] marks a reconstruction default (PAPERS.md §4)."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field("relu3", description="activation column (layer name in the store) the meta-model reads")
    target: Literal["prediction", "label"] = Field(
        "prediction", description="what the forests learn: the CNN's predicted class (fidelity) or the true label")
    k1: int = Field(10, ge=1, description="level-1 clusters [R: one per MNIST digit]")
    k2: int = Field(10, ge=1, description="level-2 clusters inside each level-1 cluster [R]")
    clustering: Literal["auto", "kmeans", "minibatch"] = Field(
        "auto", description="k-means flavour; auto = MiniBatchKMeans for more than minibatch_above rows")
    minibatch_above: int = Field(20_000, ge=1)
    minibatch_size: int = Field(4096, ge=16, description="MiniBatchKMeans batch size")
    n_init: int = Field(3, ge=1, description="k-means restarts (the best inertia is kept)")
    cluster_threads: int | None = Field(
        1, ge=1, description="OpenMP/BLAS threads for k-means and PCA (None: the libraries' default). One, because "
                             "on a busy machine their thread barriers stall a 15k-row k-means from 4 s to minutes")
    features: Literal["distances", "pca+distances", "activations+distances", "activations"] = Field(
        "pca+distances", description="the meta-level features the forests see (see the module docstring)")
    pca_components: int = Field(32, ge=1)
    forest_scope: Literal["global", "level1"] = Field(
        "global", description="one random forest for all rows, or one per level-1 cluster")
    n_estimators: int = Field(100, ge=1, description="trees per forest [R]")
    max_features: Literal["sqrt", "log2"] | float = Field("log2", description="features tried per split [R]")
    max_samples: float | None = Field(
        0.5, gt=0, le=1, description="fraction of the rows in each tree's bootstrap (None: all); half the cost of "
                                     "all, no fidelity lost on digits")
    min_samples_leaf: int = Field(1, ge=1)
    n_jobs: int | None = Field(-1, description="cores for the forests (results do not depend on it)")
    representatives: int = Field(5, ge=0, description="representative training rows kept per cluster")
    seed: int = 0


class CnnInteParams(BaseModel):
    """Per-request options of ``explain``."""

    model_config = ConfigDict(extra="forbid")

    representatives: int = Field(3, ge=0, le=50, description="representative ids listed per cluster in the path")
    diagram: bool = Field(False, description="add the route diagram as a base64 PNG in extra['diagram_png']")


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


def _int_column(batch: Mapping[str, Any], name: str, n: int) -> np.ndarray:
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
        ys.append(_int_column(batch, target, len(x)))
        labels.append(_int_column(batch, "label", len(x)) if "label" in batch else None)
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
def _thread_limit(threads: int | None) -> Iterator[None]:
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


# --- the explainer -------------------------------------------------------------------------------------------------

@register(METHOD)
class CnnInte(Explainer):
    """CNN-INTE (Liu et al. 2018): two-level clustering of a layer + random forests → a route per input."""

    name = METHOD
    needs = frozenset({"activations"})
    produces = frozenset({"path"})
    learned = True
    Params = CnnInteParams

    def __init__(self, config: CnnInteConfig | Mapping[str, Any] | None = None, *,
                 class_names: Sequence[str] | None = None):
        if isinstance(config, CnnInteConfig):
            self.config = config
        else:
            from interp_ray.config import validate

            self.config = validate(CnnInteConfig, dict(config or {}), source="cnn_inte config")
        self.class_names = list(class_names) if class_names is not None else None
        self.width: int | None = None
        self.level1 = None                       # KMeans | MiniBatchKMeans
        self.level2: list[Any] = []              # per level-1 cluster (None where the cluster is empty)
        self.pca = None                          # PCA when features == "pca+distances"
        self.forests: list[Any] = []             # one (global) or k1 (None where the cluster is empty)
        self.clusters: list[dict[str, Any]] = []  # the global interpretation, JSON-safe
        self.rep_images: dict[str, np.ndarray] = {}  # "l1.i" / "l2.i.j" -> r × C × H × W uint8
        self.info: dict[str, Any] = {}

    # -- fitting ---------------------------------------------------------------------------------------------------

    def fit(self, data: Any, *, class_names: Sequence[str] | None = None, **_: Any) -> "CnnInte":
        """Fit on ``data`` (a batch dict or an iterable of them; see the module docstring)."""
        cfg = self.config
        timings: dict[str, float] = {}
        t = time.perf_counter()
        rows = gather_rows(data, cfg.layer, cfg.target)
        timings["read_s"] = time.perf_counter() - t
        if len(rows.x) < cfg.k1:
            raise UserError(f"CNN-INTE needs at least k1={cfg.k1} rows to fit; got {len(rows.x)}")
        if class_names is not None:
            self.class_names = list(class_names)
        self.width = int(rows.x.shape[1])

        with _thread_limit(cfg.cluster_threads):
            features = self._fit_clusters(rows, timings)
            a1, a2 = self._assignments(rows.x)

        t = time.perf_counter()
        if cfg.forest_scope == "global":
            self.forests = [fit_forest(features, rows.target, cfg, cfg.seed)]
        else:
            self.forests = [fit_forest(features[a1 == i], rows.target[a1 == i], cfg, cfg.seed + i)
                            if np.any(a1 == i) else None for i in range(self.level1.n_clusters)]
        timings["forest_s"] = time.perf_counter() - t

        with _thread_limit(cfg.cluster_threads):
            self._summarise(rows, a1, a2)
        self.info = {"rows": int(len(rows.x)), "width": self.width, "timings": timings,
                     "meta_features": int(features.shape[1]),
                     "classes": sorted({int(c) for c in np.unique(rows.target)}),
                     "level1_estimator": type(self.level1).__name__}
        return self

    def _fit_clusters(self, rows: FitRows, timings: dict[str, float]) -> np.ndarray:
        """Level 1, level 2 inside each level-1 cluster and the PCA; returns the meta-level training features."""
        cfg = self.config
        t = time.perf_counter()
        self.level1 = fit_kmeans(rows.x, cfg.k1, cfg, cfg.seed)
        a1 = self.level1.predict(rows.x)
        timings["level1_s"] = time.perf_counter() - t

        t = time.perf_counter()
        self.level2 = []
        for i in range(self.level1.n_clusters):
            idx = np.flatnonzero(a1 == i)
            # Seeds differ per cluster so two clusters of the same shape never start from the same draw.
            self.level2.append(fit_kmeans(rows.x[idx], cfg.k2, cfg, cfg.seed + 1 + i) if len(idx) else None)
        timings["level2_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if cfg.features == "pca+distances":
            from sklearn.decomposition import PCA

            n_comp = min(cfg.pca_components, self.width, len(rows.x))
            self.pca = PCA(n_components=n_comp, random_state=cfg.seed).fit(rows.x)
        features = self.meta_features(rows.x)
        timings["features_s"] = time.perf_counter() - t
        return features

    def _assignments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-1 and level-2 cluster of every training row, as the estimators' ``predict`` gives them."""
        a1 = self.level1.predict(x)
        a2 = np.zeros(len(x), dtype=np.int64)
        for i, km in enumerate(self.level2):
            idx = np.flatnonzero(a1 == i)
            if km is not None and len(idx):
                a2[idx] = km.predict(x[idx])
        return a1, a2

    def _summarise(self, rows: FitRows, a1: np.ndarray, a2: np.ndarray) -> None:
        """The global interpretation: per cluster its size, class mix and representative rows (and images)."""
        r = self.config.representatives
        self.clusters, self.rep_images = [], {}
        for i, km in enumerate(self.level2):
            idx = np.flatnonzero(a1 == i)
            d1 = self.level1.transform(rows.x[idx])[:, i] if len(idx) else np.zeros(0)
            top = cluster_summary(idx, rows, d1, r)
            self._keep_images(f"l1.{i}", top.pop("_rows"), rows)
            top["cluster"], top["level2"] = i, []
            for j in range(km.n_clusters if km is not None else 0):
                sub = idx[a2[idx] == j]
                d2 = km.transform(rows.x[sub])[:, j] if len(sub) else np.zeros(0)
                s = cluster_summary(sub, rows, d2, r)
                self._keep_images(f"l2.{i}.{j}", s.pop("_rows"), rows)
                top["level2"].append({"cluster": j, **s})
            self.clusters.append(top)

    def _keep_images(self, key: str, reps: np.ndarray, rows: FitRows) -> None:
        if rows.images is not None and len(reps):
            self.rep_images[key] = rows.images[reps]

    # -- the meta-level test data -----------------------------------------------------------------------------------

    def _ready(self) -> None:
        if self.level1 is None or not self.forests:
            raise UserError("this CNN-INTE model is not fitted; call fit() or load() first")

    def meta_features(self, x: np.ndarray) -> np.ndarray:
        """The features the forests see (``config.features``): projections and/or distances to the centroids."""
        feats = self.config.features
        parts = []
        if feats == "pca+distances":
            parts.append(self.pca.transform(x))
        elif feats in ("activations+distances", "activations"):
            parts.append(x)
        if feats != "activations":
            parts.append(self.level1.transform(x))
            parts += [km.transform(x) for km in self.level2 if km is not None]
        return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)

    def assign_level1(self, x: np.ndarray) -> np.ndarray:
        """Level-1 clusters: ``level1.predict``; a row whose nearest centroid kept no training row (possible with
        mini-batch k-means) goes to the nearest centroid that did, where its level-2 clusters and forest exist."""
        a1 = self.level1.predict(x).astype(np.int64)
        empty = np.array([km is None for km in self.level2])
        bad = empty[a1]
        if bad.any():
            d = self.level1.transform(x[bad])
            d[:, empty] = np.inf
            a1[bad] = d.argmin(1)
        return a1

    def route(self, x: np.ndarray) -> Route:
        """Route every row of ``x`` (N × width) through the fitted estimators."""
        self._ready()
        x = activation_matrix({self.config.layer: x}, self.config.layer, self.width)
        with _thread_limit(self.config.cluster_threads):
            a1 = self.assign_level1(x)
            a2 = np.zeros(len(x), dtype=np.int64)
            for i in np.unique(a1):
                rows = a1 == i
                a2[rows] = self.level2[i].predict(x[rows])
            features = self.meta_features(x)
        which = a1 if self.config.forest_scope == "level1" else np.zeros(len(x), dtype=np.int64)
        votes: list[dict[int, float]] = [{} for _ in range(len(x))]
        label = np.zeros(len(x), dtype=np.int64)
        for f in np.unique(which):
            rows = np.flatnonzero(which == f)
            forest = self.forests[f]
            proba = forest.predict_proba(features[rows])
            label[rows] = forest.classes_[proba.argmax(1)]  # what forest.predict returns
            for r, p in zip(rows, proba):
                votes[r] = {int(c): float(v) for c, v in zip(forest.classes_, p)}
        return Route(level1=a1, level2=a2, forest=which, votes=votes, label=label)

    def predict(self, data: Any) -> np.ndarray:
        """The meta-model's labels for a batch dict (or the activations matrix itself)."""
        x = data if isinstance(data, np.ndarray) else activation_matrix(data, self.config.layer, self.width)
        return self.route(x).label

    # -- local interpretation ---------------------------------------------------------------------------------------

    def layers(self) -> list[str]:
        return [self.config.layer]

    def explain(self, batch: Mapping[str, Any], params: BaseModel | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        self._ready()
        x = activation_matrix(batch, self.config.layer, self.width)
        route = self.route(x)
        cnn = np.asarray(batch["prediction"]).reshape(-1) if "prediction" in batch else None
        images = batch.get("image")
        out = []
        for r in range(len(x)):
            i, j = int(route.level1[r]), int(route.level2[r])
            c1, c2 = self.clusters[i], self.clusters[i]["level2"][j]
            label = int(route.label[r])
            path = {"level1": i, "level2": j, "votes": route.votes[r], "forest": int(route.forest[r]),
                    "level1_size": c1["size"], "level1_mix": c1["mix"],
                    "level1_representatives": c1["representatives"][:p.representatives],
                    "level2_size": c2["size"], "level2_mix": c2["mix"],
                    "level2_representatives": c2["representatives"][:p.representatives]}
            extra: dict[str, Any] = {"layer": self.config.layer}
            if cnn is not None:
                extra["cnn_prediction"] = int(cnn[r])
                extra["agrees_with_cnn"] = bool(int(cnn[r]) == label)
            e = Explanation(label=label, label_name=self.class_name(label), method=METHOD, path=path, extra=extra)
            if p.diagram:
                png = route_diagram(self, e, image=None if images is None else np.asarray(images[r]))
                e.extra["diagram_png"] = base64.b64encode(png).decode("ascii")
            out.append(e)
        return out

    def class_name(self, c: int) -> str | None:
        if self.class_names is not None and 0 <= c < len(self.class_names):
            return self.class_names[c]
        return None

    # -- global interpretation and reports --------------------------------------------------------------------------

    def global_interpretation(self) -> dict[str, Any]:
        """Every level-1 cluster with its level-2 clusters: size, class mix, representative ids (JSON-safe)."""
        self._ready()
        return {"method": METHOD, "layer": self.config.layer, "target": self.config.target,
                "class_names": self.class_names, "level1": self.clusters}

    def representative_images(self, level1: int, level2: int | None = None) -> np.ndarray | None:
        """The kept images of a cluster's representatives (r × C × H × W uint8), or None when none were given."""
        key = f"l1.{level1}" if level2 is None else f"l2.{level1}.{level2}"
        return self.rep_images.get(key)

    def report(self, data: Any) -> dict[str, Any]:
        """Fidelity (agreement with the CNN's ``prediction``) and accuracy (against ``label``) over ``data``."""
        self._ready()
        n = agree = meta_ok = cnn_ok = labelled = 0
        per1: dict[int, list[int]] = {}
        for batch in iter_batches(data):
            x = activation_matrix(batch, self.config.layer, self.width)
            route = self.route(x)
            if "prediction" not in batch:
                raise UserError("report needs the CNN's 'prediction' column to measure fidelity")
            cnn = _int_column(batch, "prediction", len(x))
            same = route.label == cnn
            n, agree = n + len(x), agree + int(same.sum())
            for i, s in zip(route.level1, same):
                per1.setdefault(int(i), [0, 0])[0] += 1
                per1[int(i)][1] += int(s)
            if "label" in batch:
                y = _int_column(batch, "label", len(x))
                labelled += len(x)
                meta_ok += int((route.label == y).sum())
                cnn_ok += int((cnn == y).sum())
        if n == 0:
            raise UserError("report got no rows")
        out: dict[str, Any] = {"rows": n, "fidelity": agree / n,
                               "per_level1": {i: {"rows": v[0], "fidelity": v[1] / v[0]} for i, v in sorted(per1.items())}}
        if labelled:
            out.update(meta_accuracy=meta_ok / labelled, cnn_accuracy=cnn_ok / labelled,
                       accuracy_gap_points=100.0 * (meta_ok - cnn_ok) / labelled)
        return out

    # -- checkpoint ------------------------------------------------------------------------------------------------

    def checkpoint_config(self) -> dict[str, Any]:
        import sklearn

        return {"explainer": METHOD, "cnn_inte": self.config.model_dump(), "class_names": self.class_names,
                "width": self.width, "clusters": self.clusters, "info": self.info,
                "sklearn_version": sklearn.__version__}

    def save(self, path: str) -> str:
        import skops.io as sio
        import torch

        from interp_ray.checkpoint import save_checkpoint

        self._ready()
        blob = sio.dumps({"level1": self.level1, "level2": self.level2, "pca": self.pca, "forests": self.forests})
        tensors = {f"rep.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.rep_images.items()}
        return save_checkpoint(path, kind=KIND, config=self.checkpoint_config(), state_dict=tensors,
                               files={ESTIMATORS_FILE: blob})

    @classmethod
    def load(cls, path: str, **_: Any) -> "CnnInte":
        import sklearn

        from interp_ray.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path, kind=KIND)
        cfg = ckpt.config
        if cfg.get("explainer") != METHOD:
            raise UserError(f"checkpoint {path} holds a {cfg.get('explainer')!r} explainer, not {METHOD!r}")
        if ESTIMATORS_FILE not in ckpt.files:
            raise UserError(f"checkpoint {path} has no {ESTIMATORS_FILE}")
        if cfg.get("sklearn_version") != sklearn.__version__:
            warnings.warn(f"checkpoint {path} was written with scikit-learn {cfg.get('sklearn_version')}; this is "
                          f"{sklearn.__version__}: the trees load, but check the fidelity report", stacklevel=2)
        est = load_estimators(ckpt.files[ESTIMATORS_FILE], source=f"{path}/{ESTIMATORS_FILE}")
        self = cls(cfg["cnn_inte"], class_names=cfg.get("class_names"))
        self.width = int(cfg["width"])
        self.level1, self.level2, self.pca, self.forests = est["level1"], est["level2"], est["pca"], est["forests"]
        self.clusters = _int_keys(cfg["clusters"])
        self.info = cfg.get("info", {})
        self.rep_images = {k[len("rep."):]: v.numpy() for k, v in ckpt.state_dict.items() if k.startswith("rep.")}
        return self


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


def _int_keys(v: Any) -> Any:
    """JSON turned the class keys of the mixes into strings; turn them back into ints."""
    if isinstance(v, dict):
        return {(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k): _int_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_int_keys(x) for x in v]
    return v


# --- pictures ------------------------------------------------------------------------------------------------------

def _new_figure(width: float, height: float):
    """A figure drawn by the Agg canvas directly: no pyplot, no global backend switch, safe in threads and servers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _show(ax, image: np.ndarray | None) -> None:
    """Draw one C × H × W image (uint8 or float in [0, 1]) on ``ax``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        return
    img = np.asarray(image, dtype=np.float32)
    if image.dtype == np.uint8:
        img = img / 255.0
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(img, 0.0, 1.0), interpolation="nearest")


def _mix_text(model: CnnInte, mix: dict[int, int] | None, size: int, top: int = 3) -> str:
    if not mix or not size:
        return "empty"
    parts = sorted(mix.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{model.class_name(c) or c}: {100.0 * n / size:.0f}%" for c, n in parts)


def _image_panel(fig, cell, title: str, images: np.ndarray | None, ids: list[str]) -> None:
    """A titled grid of representative images inside one grid cell (ids as text when no images were kept)."""
    frame = fig.add_subplot(cell)
    frame.axis("off")
    frame.set_title(title, fontsize=9)
    n = len(images) if images is not None else len(ids)
    if n == 0:
        frame.text(0.5, 0.5, "no representatives", ha="center", va="center", fontsize=8)
        return
    cols = min(n, 3)
    grid = cell.subgridspec(math.ceil(n / cols) + 1, cols, height_ratios=[0.15] + [1] * math.ceil(n / cols))
    for k in range(n):
        ax = fig.add_subplot(grid[1 + k // cols, k % cols])
        if images is not None:
            _show(ax, images[k])
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, ids[k], ha="center", va="center", fontsize=5, wrap=True, transform=ax.transAxes)


def route_figure(model: CnnInte, explanation: Explanation, image: np.ndarray | None = None):
    """The route an explanation states, as a figure: input → level-1 cluster → level-2 cluster → votes → label.

    Everything drawn is read from ``explanation.path`` (and the model's stored representatives), so the picture
    can only show the route the explanation gives.
    """
    path = explanation.path
    i, j, votes = int(path["level1"]), int(path["level2"]), path["votes"]
    c1, c2 = model.clusters[i], model.clusters[i]["level2"][j]
    fig = _new_figure(15, 4.2)
    gs = fig.add_gridspec(1, 9, width_ratios=[1.1, 0.3, 2, 0.3, 2, 0.3, 2.2, 0.3, 1.3], wspace=0.15,
                          left=0.02, right=0.98, top=0.8, bottom=0.08)
    ax_in = fig.add_subplot(gs[0, 0])
    _show(ax_in, image)
    ax_in.set_title("input", fontsize=9)
    _image_panel(fig, gs[0, 2], f"level-1 cluster {i}\n{c1['size']} rows · {_mix_text(model, c1['mix'], c1['size'])}",
                 model.representative_images(i), c1["representatives"])
    _image_panel(fig, gs[0, 4], f"level-2 cluster {i}.{j}\n{c2['size']} rows · "
                 f"{_mix_text(model, c2['mix'], c2['size'])}", model.representative_images(i, j),
                 c2["representatives"])
    ax_v = fig.add_subplot(gs[0, 6])
    classes = sorted(votes)
    names = [str(model.class_name(c) or c) for c in classes]
    colours = ["tab:orange" if c == explanation.label else "tab:blue" for c in classes]
    ax_v.barh(range(len(classes)), [votes[c] for c in classes], color=colours)
    ax_v.set_yticks(range(len(classes)), names, fontsize=7)
    ax_v.set_xlim(0, 1)
    ax_v.invert_yaxis()
    ax_v.tick_params(axis="x", labelsize=7)
    ax_v.set_title("random-forest votes", fontsize=9)
    ax_l = fig.add_subplot(gs[0, 8])
    ax_l.axis("off")
    name = explanation.label_name or str(explanation.label)
    ax_l.text(0.5, 0.6, f"label\n{name}", ha="center", va="center", fontsize=16, weight="bold")
    if "cnn_prediction" in explanation.extra:
        cnn = explanation.extra["cnn_prediction"]
        ax_l.text(0.5, 0.25, f"CNN: {model.class_name(cnn) or cnn}", ha="center", va="center", fontsize=9)
    for col in (1, 3, 5, 7):
        ax = fig.add_subplot(gs[0, col])
        ax.axis("off")
        ax.text(0.5, 0.5, "→", ha="center", va="center", fontsize=22)
    fig.suptitle(f"CNN-INTE route ({model.config.layer}): level-1 {i} → level-2 {i}.{j} → "
                 f"votes {votes.get(explanation.label, 0.0):.0%} → label {name}", fontsize=11)
    return fig


def route_diagram(model: CnnInte, explanation: Explanation, image: np.ndarray | None = None,
                  path: str | None = None) -> bytes:
    """``route_figure`` as PNG bytes, also written to ``path`` when given."""
    png = _png(route_figure(model, explanation, image))
    if path is not None:
        with open(path, "wb") as f:
            f.write(png)
    return png


def _strip(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """r × C × H × W uint8 → one C × H × (r·(W+pad)−pad) strip with white gaps: one axes instead of r."""
    r, c, h, w = images.shape
    out = np.full((c, h, r * (w + pad) - pad), 255, dtype=np.uint8)
    for k in range(r):
        out[:, :, k * (w + pad):k * (w + pad) + w] = images[k]
    return out


def global_figure(model: CnnInte, *, path: str | None = None) -> bytes:
    """One row per level-1 cluster: size and class mix, its representatives, its level-2 sizes (PNG bytes)."""
    model._ready()
    k1 = len(model.clusters)
    height = 1.1 * k1 + 0.6
    fig = _new_figure(12, height)
    gs = fig.add_gridspec(k1, 3, width_ratios=[2.0, 5.0, 4.0], left=0.01, right=0.99, top=1 - 0.5 / height,
                          bottom=0.03, hspace=0.4, wspace=0.1)
    for i, c in enumerate(model.clusters):
        ax = fig.add_subplot(gs[i, 0])
        ax.axis("off")
        ax.text(0, 0.5, f"level-1 {i}\n{c['size']} rows\n{_mix_text(model, c['mix'], c['size'])}",
                va="center", fontsize=8)
        imgs = model.representative_images(i)
        ax_img = fig.add_subplot(gs[i, 1])
        if imgs is not None:
            _show(ax_img, _strip(imgs))
        else:
            ax_img.axis("off")
            ax_img.text(0, 0.5, ", ".join(c["representatives"]), va="center", fontsize=6)
        ax2 = fig.add_subplot(gs[i, 2])
        sizes = [s["size"] for s in c["level2"]]
        ax2.bar(range(len(sizes)), sizes, color="tab:gray")
        ax2.set_xticks(range(len(sizes)), [f"{i}.{j}" for j in range(len(sizes))], fontsize=6)
        ax2.tick_params(axis="y", labelsize=6)
    fig.suptitle(f"CNN-INTE global view ({model.config.layer}): level-1 clusters, representatives, level-2 sizes",
                 fontsize=10)
    png = _png(fig)
    if path is not None:
        with open(path, "wb") as f:
            f.write(png)
    return png


__all__ = ["CnnInte", "CnnInteConfig", "CnnInteParams", "Route", "global_figure", "iter_batches", "route_diagram",
           "route_figure"]
