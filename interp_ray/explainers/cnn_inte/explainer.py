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
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from interp_ray.errors import UserError
from interp_ray.explainers.base import Explainer, Explanation, check_named_layers, register
from interp_ray.explainers.cnn_inte.config import METHOD, CnnInteConfig, CnnInteParams
from interp_ray.explainers.cnn_inte.meta_model import (FitRows, Route, activation_matrix, cluster_summary, fit_forest,
                                                       fit_kmeans, gather_rows, int_column, int_keys, iter_batches,
                                                       load_estimators, thread_limit)
from interp_ray.explainers.cnn_inte.plots import route_diagram

KIND = "explainer"
ESTIMATORS_FILE = "estimators.skops"


@register(METHOD)
class CnnInte(Explainer):
    """CNN-INTE (Liu et al. 2018): two-level clustering of a layer + random forests → a route per input."""

    name = METHOD
    needs = frozenset({"activations"})
    produces = frozenset({"path"})
    learned = True
    Params = CnnInteParams
    summary_skips = frozenset({"diagram_png"})   # the route diagram, base64: a picture, not a reader's number

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

    # -- the layer it reads -----------------------------------------------------------------------------------------

    @classmethod
    def defaults_for(cls, classifier: Any) -> dict[str, Any]:
        """The penultimate vector (the layer the final classifier layer reads): the paper meta-learns over the
        CNN's last hidden layer. From the classifier's roles, so any architecture has one, or a one-line refusal."""
        return {"layer": cls.role_layers(classifier, "penultimate")[0]}

    @classmethod
    def configured_for(cls, config: CnnInteConfig, classifier: Any) -> CnnInteConfig:
        """``config`` with its layer for ``classifier``: the one it names, checked to exist, else the default
        (``defaults_for``); a name the model does not have is one line naming the field, before any work."""
        if config.layer is None:
            return config.model_copy(update=cls.defaults_for(classifier))
        check_named_layers(cls, classifier, [config.layer], field="cnn_inte.layer")
        return config

    # -- fitting ---------------------------------------------------------------------------------------------------

    def fit(self, data: Any, *, class_names: Sequence[str] | None = None, **_: Any) -> "CnnInte":
        """Fit on ``data`` (a batch dict or an iterable of them; see the module docstring)."""
        cfg = self.config
        if cfg.layer is None:
            raise UserError("cnn_inte.layer is not set: name the activation column to fit on (the jobs fill in the "
                            "classifier's penultimate layer)")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        rows = gather_rows(data, cfg.layer, cfg.target)
        timings["read_s"] = time.perf_counter() - t
        if len(rows.x) < cfg.k1:
            raise UserError(f"CNN-INTE needs at least k1={cfg.k1} rows to fit; got {len(rows.x)}")
        if class_names is not None:
            self.class_names = list(class_names)
        self.width = int(rows.x.shape[1])

        with thread_limit(cfg.cluster_threads):
            features = self._fit_clusters(rows, timings)
            a1, a2 = self._assignments(rows.x)

        t = time.perf_counter()
        if cfg.forest_scope == "global":
            self.forests = [fit_forest(features, rows.target, cfg, cfg.seed)]
        else:
            self.forests = [fit_forest(features[a1 == i], rows.target[a1 == i], cfg, cfg.seed + i)
                            if np.any(a1 == i) else None for i in range(self.level1.n_clusters)]
        timings["forest_s"] = time.perf_counter() - t

        with thread_limit(cfg.cluster_threads):
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
        with thread_limit(self.config.cluster_threads):
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

    def draw(self, image: np.ndarray, explanation: Explanation, **drawing: Any) -> bytes:
        """The route diagram: the image, its level-1 and level-2 clusters (their representative images), the forest's
        votes and the label."""
        self.parse_drawing(drawing)
        return route_diagram(self, explanation, image)

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
            cnn = int_column(batch, "prediction", len(x))
            same = route.label == cnn
            n, agree = n + len(x), agree + int(same.sum())
            for i, s in zip(route.level1, same):
                per1.setdefault(int(i), [0, 0])[0] += 1
                per1[int(i)][1] += int(s)
            if "label" in batch:
                y = int_column(batch, "label", len(x))
                labelled += len(x)
                meta_ok += int((route.label == y).sum())
                cnn_ok += int((cnn == y).sum())
        if n == 0:
            raise UserError("report got no rows")
        per_level1 = {i: {"rows": v[0], "fidelity": v[1] / v[0]} for i, v in sorted(per1.items())}
        out: dict[str, Any] = {"rows": n, "fidelity": agree / n, "per_level1": per_level1}
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

    @classmethod
    def specimen(cls, path, classifier) -> str:
        """A small CNN-INTE over the classifier's ``relu3`` for the first 120 training rows of its data set (the batch
        dict the activation store would hold): the conformance suite's specimen."""
        from interp_ray.activations import ActivationExtractor
        from interp_ray.checkpoint import read_checkpoint
        from interp_ray.data import load_dataset

        config = read_checkpoint(classifier, kind="classifier").config
        batch = load_dataset(config["data"]["name"], "train").get_batch(np.arange(120))
        batch = {**ActivationExtractor(str(classifier), ["relu3"])(batch), "image": batch["image"]}
        fitted = cls({"layer": "relu3", "k1": 3, "k2": 2, "n_estimators": 5}, class_names=config["class_names"])
        return fitted.fit(batch).save(str(path))

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

        from interp_ray.checkpoint import read_explainer

        ckpt = read_explainer(path, METHOD, required=[ESTIMATORS_FILE])
        cfg = ckpt.config
        if cfg.get("sklearn_version") != sklearn.__version__:
            warnings.warn(f"checkpoint {path} was written with scikit-learn {cfg.get('sklearn_version')}; this is "
                          f"{sklearn.__version__}: the trees load, but check the fidelity report", stacklevel=2)
        est = load_estimators(ckpt.files[ESTIMATORS_FILE], source=f"{path}/{ESTIMATORS_FILE}")
        self = cls(cfg["cnn_inte"], class_names=cfg.get("class_names"))
        self.width = int(cfg["width"])
        self.level1, self.level2, self.pca, self.forests = est["level1"], est["level2"], est["pca"], est["forests"]
        self.clusters = int_keys(cfg["clusters"])
        self.info = cfg.get("info", {})
        self.rep_images = {k[len("rep."):]: v.numpy() for k, v in ckpt.state_dict.items() if k.startswith("rep.")}
        return self


__all__ = ["ESTIMATORS_FILE", "KIND", "CnnInte"]
