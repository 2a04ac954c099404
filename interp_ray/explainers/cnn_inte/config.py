"""CNN-INTE's configuration and request parameters: plain pydantic models, no torch or scikit-learn objects, so a
job config, the CLI or a server validates them without importing the estimators."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

METHOD = "cnn_inte"
FEATURE_SETS = ("distances", "pca+distances", "activations+distances", "activations")


class CnnInteConfig(BaseModel):
    """How a CNN-INTE meta-model is built. [R] marks a reconstruction default (PAPERS.md §4)."""

    model_config = ConfigDict(extra="forbid")

    layer: str | None = Field(
        None, description="activation column (layer name in the store) the meta-model reads; None: the classifier's "
                          "penultimate vector (its 'penultimate' role), filled in by the job before any work")
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


__all__ = ["FEATURE_SETS", "METHOD", "CnnInteConfig", "CnnInteParams"]
