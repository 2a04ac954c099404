"""What FLINT trains on, read from disk: the splits the config names and the predictor f (built fresh for joint and
BASE runs, the frozen checkpoint post hoc). The method's training (``interp_ray.explainers.flint.training``) takes
them handed in as ``FlintInputs``; this module is the one place the FLINT job, its Ray Train workers, the benchmarks
and the tests load them."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from interp_ray.errors import UserError
from interp_ray.explainers.flint.config import FlintJobConfig
from interp_ray.explainers.flint.training import FlintInputs
from interp_ray.models import Classifier


def materialize(ds, limit: int):
    """A generated dataset of at most ``limit`` rows as an in-memory ArrayDataset (images, labels, attributes), so
    epochs do not regenerate it; other datasets (and larger ones) are returned as they are."""
    from interp_ray.data.base import ArrayDataset

    if isinstance(ds, ArrayDataset) or len(ds) > limit:
        return ds
    batch = ds.get_batch(np.arange(len(ds)))
    extras = {k: batch[k] for k in ("attributes",) if k in batch}
    return ArrayDataset(name=ds.name, split=ds.split, images=batch["image"], labels=batch["label"],
                        class_names=list(ds.class_names), ids=batch["id"], extras=extras)


def load_splits(cfg: FlintJobConfig, splits: Sequence[str] = ("train", "val")) -> list:
    from interp_ray.data import load_dataset

    return [materialize(load_dataset(cfg.data.name, s, **cfg.data.options), cfg.materialize_rows) for s in splits]


def align_to_predictor(cfg: FlintJobConfig, datasets: Sequence, splits: Sequence[str]) -> list:
    """Post hoc, the data's labels numbered as the frozen predictor's outputs (``align_classes``: another order is
    translated, other names refused); joint and BASE runs build f from the data, so its numbering is f's."""
    if cfg.flint.mode != "posthoc":
        return list(datasets)
    from interp_ray.checkpoint import load_classifier
    from interp_ray.data.select import align_classes

    names = load_classifier(cfg.flint.predictor_checkpoint).class_names
    return [align_classes(ds, names, what=f"{cfg.data.name}/{split}") for ds, split in zip(datasets, splits)]


def load_predictor(cfg: FlintJobConfig, train_ds) -> tuple[Classifier, dict[str, Any], str | None]:
    """The predictor to train (joint/base: built from ``cfg.model``) or to freeze (post-hoc: the checkpoint, checked
    against ``train_ds`` when given).

    Returns the module, its model spec ``{"name", "options"}`` and (post-hoc) the checkpoint digest.
    """
    from interp_ray.checkpoint import load_classifier
    from interp_ray.models import build_model

    if cfg.flint.mode == "posthoc":
        loaded = load_classifier(cfg.flint.predictor_checkpoint)
        spec = loaded.config["model"]
        if train_ds is not None and (loaded.model.num_classes != train_ds.num_classes
                                     or loaded.model.input_shape != tuple(train_ds.image_shape)):
            raise UserError(f"predictor {cfg.flint.predictor_checkpoint} takes {loaded.model.input_shape} with "
                            f"{loaded.model.num_classes} classes; the data is {tuple(train_ds.image_shape)} with "
                            f"{train_ds.num_classes}")
        return loaded.model, {"name": spec["name"], "options": spec.get("options", {})}, loaded.digest
    c, h, _ = train_ds.image_shape
    options = {"num_classes": train_ds.num_classes, "in_channels": c, "image_size": h, **cfg.model.options}
    return build_model(cfg.model.name, **options), {"name": cfg.model.name, "options": options}, None


def flint_inputs(cfg: FlintJobConfig, *, data: bool = True) -> FlintInputs:
    """Seeds (``train.seed``), then the train and val splits (unless ``data`` is False: a post-hoc Ray Train worker
    streams the store instead) and f. Seeding first makes f's initial weights, and Ψ/h/d's drawn next by
    ``training.setup``, the same on every worker and in every run of one config."""
    from interp_ray.training import seed_everything

    seed_everything(cfg.train.seed)
    train_ds, val_ds = align_to_predictor(cfg, load_splits(cfg), ("train", "val")) if data else (None, None)
    predictor, spec, digest = load_predictor(cfg, train_ds)
    return FlintInputs(predictor, spec, digest, train_ds, val_ds)
