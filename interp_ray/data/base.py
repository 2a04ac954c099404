"""The one dataset shape every loader returns.

A dataset is a sized, indexable collection of rows. A row holds ``id`` (str), ``image`` (float32, C×H×W, values in
[0, 1]), ``label`` (int64) and per-dataset extras (boxes, attributes, sentences …). Access is batched —
``get_batch(indices)`` returns a dict of numpy arrays whose first axis is the batch — because every consumer
(DataLoader, Ray Data, the activation extractor) works in batches, and generators such as scenes make a batch far
faster than N single rows. Nothing forces the whole dataset into memory: scenes are generated per index.
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from interp_ray.data.images import to_unit_float, unit_float_table
from interp_ray.errors import UserError


class ImageDataset(torch.utils.data.Dataset, abc.ABC):
    """Base class. Subclasses implement ``__len__`` and ``get_batch``."""

    name: str
    split: str
    class_names: list[str]
    image_shape: tuple[int, int, int]  # C, H, W

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``indices`` as a dict of arrays: ``id`` (str), ``image`` (float32 N×C×H×W), ``label`` (int64),
        extras."""

    # The dtype of ``get_pixel_batch``'s ``image``: "uint8" where rows are decoded from image files or kept as bytes,
    # "float32" where they are made as floats (generated scenes, digits).
    pixel_dtype: str = "float32"

    def get_pixel_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """``get_batch`` with ``image`` in ``pixel_dtype``. A loading stage ships these to the model's process, a
        quarter of float32's bytes where they are uint8, and ``image_tensor`` scales them there to ``get_batch``'s
        very values."""
        return self.get_batch(indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        batch = self.get_batch([index % len(self)])
        return {k: v[0] for k, v in batch.items()}

    def iter_batches(self, batch_size: int, *, start: int = 0, stop: int | None = None
                     ) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches in index order, never more than one batch in memory."""
        stop = len(self) if stop is None else min(stop, len(self))
        for lo in range(start, stop, batch_size):
            yield self.get_batch(np.arange(lo, min(lo + batch_size, stop)))

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
               drop_last: bool = False, sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
        """A DataLoader yielding ``(images, labels)`` tensors; one ``get_batch`` call per batch.

        ``sampler`` lets Ray Train's ``prepare_data_loader`` (or a DistributedSampler) choose the indices.
        """
        if sampler is None:
            gen = torch.Generator().manual_seed(seed)
            sampler = (torch.utils.data.RandomSampler(self, generator=gen) if shuffle
                       else torch.utils.data.SequentialSampler(self))
        return torch.utils.data.DataLoader(
            _IndexDataset(self), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
            num_workers=num_workers, collate_fn=_CollateImages(self))

    def to_ray(self, *, rows_per_block: int = 1024):
        """This dataset as a lazy ``ray.data.Dataset`` of numpy batches (rows are made inside Ray tasks)."""
        import ray.data  # Ray stays optional for the core

        n = len(self)
        ds = ray.data.range(n, override_num_blocks=max(1, math.ceil(n / rows_per_block)))
        return ds.map_batches(_RayBatchFn(self), batch_format="numpy", batch_size=rows_per_block)

    def extra_columns(self) -> list[str]:
        """The row columns besides ``id``, ``image`` and ``label`` (e.g. ``sentences``: captions), which a job can
        keep in the activation store. Here read off one row; a loader that knows them at load time says so without
        reading a row."""
        if len(self) == 0:
            return []
        return sorted(set(self.get_batch(np.arange(1))) - {"id", "image", "label"})

    def describe(self) -> dict[str, Any]:
        """What identifies this dataset's content (used in content hashes and checkpoints)."""
        return {"name": self.name, "split": self.split, "rows": len(self), "image_shape": list(self.image_shape),
                "classes": list(self.class_names)}


class DecodedImageDataset(ImageDataset):
    """A dataset whose rows are decoded from encoded images (files, tar members, Parquet bytes): its pixels are uint8,
    and one ``_rows(indices, pixels=…)`` gives both ``get_batch`` (float32) and ``get_pixel_batch`` (uint8)."""

    pixel_dtype = "uint8"

    @abc.abstractmethod
    def _rows(self, indices, *, pixels: bool) -> dict[str, np.ndarray]: ...

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        return self._rows(indices, pixels=False)

    def get_pixel_batch(self, indices) -> dict[str, np.ndarray]:
        return self._rows(indices, pixels=True)


def read_rows(dataset: ImageDataset, indices: np.ndarray, *, pixels: bool = False
              ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, str]]:
    """``dataset.get_batch(indices)`` (``pixels``: ``get_pixel_batch``), keeping going past rows whose input cannot be
    read (a corrupt or missing image file, bytes that do not decode): (positions read, their rows, position → the
    one-line reason for each other).

    A batch that reads whole costs one ``get_batch``; only a batch that fails is read again row by row, to learn
    which rows fail — a ``UserError`` for a single row is that row's input, never the whole job's.
    """
    idx = np.asarray(indices, dtype=np.int64)
    get = dataset.get_pixel_batch if pixels else dataset.get_batch
    try:
        return np.arange(len(idx)), get(idx), {}
    except UserError:
        pass
    good, batches, bad = [], [], {}
    for pos in range(len(idx)):
        try:
            batches.append(get(idx[pos:pos + 1]))
            good.append(pos)
        except UserError as exc:
            bad[pos] = str(exc)
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if batches else {}
    return np.asarray(good, dtype=np.int64), rows, bad


class _IndexDataset(torch.utils.data.Dataset):
    """Yields indices only, so the collate function can build a whole batch in one call."""

    def __init__(self, base: ImageDataset):
        self.n = len(base)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _CollateImages:
    def __init__(self, base: ImageDataset):
        self.base = base

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.base.get_batch(np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(batch["image"])), torch.from_numpy(batch["label"])


class _RayBatchFn:
    def __init__(self, base: ImageDataset):
        self.base = base

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.base.get_batch(np.asarray(batch["id"], dtype=np.int64))
        return {k: _arrow_friendly(v) for k, v in out.items()}


def _arrow_friendly(arr: np.ndarray) -> np.ndarray:
    """Rows of strings (N×K unicode) become lists: a fixed-width unicode tensor's width varies per batch, and Arrow
    cannot unify tensor blocks of different widths; list<string> has no width."""
    if arr.dtype.kind == "U" and arr.ndim > 1:
        rows = np.empty(len(arr), dtype=object)
        rows[:] = [list(r) for r in arr.tolist()]
        return rows
    return arr


def to_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float images → float32 in [0, 1]."""
    if images.dtype == np.uint8:
        return to_unit_float(images)
    return images.astype(np.float32, copy=False)


def fresh_float_images(images: np.ndarray) -> np.ndarray:
    """A batch's ``image`` (float32 in [0, 1], or ``get_pixel_batch``'s uint8) → a new, writable float32 array in
    [0, 1]. Ray Data hands out read-only, zero-copy views, which torch must not share."""
    images = np.asarray(images)
    return to_unit_float(images) if images.dtype == np.uint8 else np.array(images, dtype=np.float32, copy=True)


@functools.lru_cache(maxsize=8)
def _pixel_scaler(device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How ``device`` turns uint8 pixels into ``get_batch``'s floats exactly: dividing by 255 where its division
    gives the 256 values bit for bit (checked here, once), a 256-entry table lookup where it does not (a GPU may
    divide by multiplying with 1/255). Division is 20× cheaper on a CPU: 0.09 vs 1.8 ms a 224×224 row."""
    table = torch.from_numpy(unit_float_table()).to(device)
    divided = torch.arange(256, device=device).to(torch.uint8).float() / 255.0
    if torch.equal(divided.view(torch.int32), table.view(torch.int32)):
        return lambda pixels: pixels.float().div_(255.0)
    return lambda pixels: table[pixels.long()]


def image_tensor(images: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """A batch's ``image`` (as ``fresh_float_images`` takes it) → a float32 tensor in [0, 1] on ``device``.

    uint8 pixels cross to the device as uint8 (a quarter of the bytes) and are scaled there to ``get_batch``'s
    values bit for bit (``_pixel_scaler``).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        return torch.from_numpy(fresh_float_images(images)).to(device, non_blocking=True)
    pixels = torch.from_numpy(np.array(images, copy=True)).to(device, non_blocking=True)
    return _pixel_scaler(str(torch.device(device)))(pixels)


@dataclass
class ArrayDataset(ImageDataset):
    """An in-memory dataset: images (N×C×H×W, uint8 or float in [0, 1]), labels, ids and optional extras.

    uint8 images are kept as uint8 and converted per batch, so a large set costs a quarter of the memory.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    ids: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {self.images.shape}")
        n = len(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.ids is None:
            self.ids = np.array([f"{self.name}/{self.split}/{i:07d}" for i in range(n)])
        for key, arr in {"labels": self.labels, "ids": self.ids, **self.extras}.items():
            if len(arr) != n:
                raise ValueError(f"{key} has {len(arr)} rows, images have {n}")
        self.image_shape = tuple(int(s) for s in self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def pixel_dtype(self) -> str:  # type: ignore[override]
        return "uint8" if self.images.dtype == np.uint8 else "float32"

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        return self._rows(indices, to_float_images)

    def get_pixel_batch(self, indices) -> dict[str, np.ndarray]:
        return self._rows(indices, lambda images: images if images.dtype == np.uint8 else to_float_images(images))

    def _rows(self, indices, image: Any) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        out = {"id": self.ids[idx], "image": image(self.images[idx]), "label": self.labels[idx]}
        out.update({k: v[idx] for k, v in self.extras.items()})
        return out


class HeadDataset(ImageDataset):
    """The first ``rows`` rows of ``base``, nothing copied (a job's "explain the first N rows" for any loader)."""

    def __init__(self, base: ImageDataset, rows: int):
        if rows < 1:
            raise ValueError(f"rows={rows} must be at least 1")
        self.base, self.rows = base, min(int(rows), len(base))
        self.name, self.split = base.name, base.split
        self.class_names, self.image_shape = list(base.class_names), tuple(base.image_shape)

    def __len__(self) -> int:
        return self.rows

    @property
    def pixel_dtype(self) -> str:  # type: ignore[override]
        return self.base.pixel_dtype

    def _checked(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.rows):
            raise IndexError(f"index out of range for the first {self.rows} rows")
        return idx

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        return self.base.get_batch(self._checked(indices))

    def get_pixel_batch(self, indices) -> dict[str, np.ndarray]:
        return self.base.get_pixel_batch(self._checked(indices))

    def extra_columns(self) -> list[str]:
        return self.base.extra_columns()

    def describe(self) -> dict[str, Any]:
        # the base's identity (its own options, generator seeds …) with this row count in place of its own
        return {**self.base.describe(), "rows": self.rows, "head_of": len(self.base)}
