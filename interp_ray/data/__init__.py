"""Datasets by name. Loaders are imported lazily so ``import interp_ray.data`` stays cheap."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping, Sequence

from interp_ray.data.base import ArrayDataset, HeadDataset, ImageDataset
from interp_ray.errors import UnknownNameError, UserError

# name -> "module:function"; each function takes (split, **options) and returns an ImageDataset.
LOADERS: dict[str, str] = {
    "digits": "interp_ray.data.digits:load_digits",
    "scenes": "interp_ray.data.scenes:load_scenes",
    "scene_clips": "interp_ray.data.scenes:load_scene_videos",
    "cub": "interp_ray.data.cub:load_cub",
    "mnist_idx": "interp_ray.data.mnist_idx:load_mnist_idx",
    "fashion_mnist": "interp_ray.data.fashion_mnist:load_fashion_mnist",
    "image_folder": "interp_ray.data.image_folder:load_image_folder",
    "parquet": "interp_ray.data.parquet:load_parquet_images",
    "webdataset": "interp_ray.data.webdataset:load_webdataset",
}


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def get_loader(name: str):
    if name not in LOADERS:
        raise UnknownNameError("dataset", name, LOADERS)
    module, func = LOADERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def load_dataset(name: str, split: str = "train", **options: Any) -> ImageDataset:
    """Load dataset ``name`` (see ``dataset_names()``); unknown options fail with the list of valid ones.

    ``subset`` (every loader that knows its labels at load time): which rows, see ``interp_ray.data.select``."""
    loader = get_loader(name)
    params = inspect.signature(loader).parameters
    subset = options.pop("subset", None)
    valid = [p for p in params if p != "split"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid: "
                        f"{', '.join(valid + ['subset'])}")
    dataset = loader(split, **options)
    if subset is None:
        return dataset
    from interp_ray.data.select import apply_subset

    return apply_subset(dataset, subset)


def load_as_explained(data: Mapping[str, Any], split: str, class_names: Sequence[str]) -> ImageDataset:
    """The split an explanation job explained, as that job loaded it, from its record of it (``data``: ``name``,
    ``options`` and, when it explained only the split's head, ``rows``) and the model's ``class_names``: loaded, cut
    to its first ``rows``, then numbered as the model's classes. The head comes first, so the rows are the split's
    first ones whatever the numbering; the job and whoever reads its store again (the saliency report) share this,
    so they cannot drift apart."""
    from interp_ray.data.select import align_classes

    ds = load_dataset(data["name"], split, **data.get("options", {}))
    if data.get("rows") is not None:
        ds = HeadDataset(ds, int(data["rows"]))
    return align_classes(ds, class_names, what=f"{data['name']}/{split}")


__all__ = ["ArrayDataset", "ImageDataset", "LOADERS", "dataset_names", "get_loader", "load_as_explained",
           "load_dataset"]
