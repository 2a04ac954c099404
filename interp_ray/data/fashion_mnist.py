"""Fashion-MNIST (Xiao et al. 2017): 70,000 real 28×28 grey images of clothing in ten classes, MNIST's IDX layout.

Read from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``, the four original
``*-ubyte.gz`` files) through the IDX loader of ``mnist_idx``; nothing is downloaded. Splits:

* ``train``: 55,000 rows of the 60,000-row training file;
* ``val``: the other 5,000, a fixed seeded draw (``seed``) from the training file, disjoint from ``train``;
* ``test``: the 10,000-row test file, in file order (its labels start 9, 2, 1, 1, 6).

Row ids name the file row (``fashion_mnist/train/00042`` is row 42 of the training file, whichever split holds it),
so ids from different splits of one seed never collide and a row keeps its id across seeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from interp_ray.data.mnist_idx import FILES, IdxDataset, find_idx_file, parse_idx
from interp_ray.errors import UserError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ROOT_ENV = "INTERP_RAY_FASHION_MNIST"   # another directory with the four files (a test fixture, a copy elsewhere)
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
SPLITS = ("train", "val", "test")
VAL_ROWS = 5000
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` (scripts/env.sh does this when run as root)"


def default_root() -> str:
    return os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def val_indices(n: int, seed: int, val_rows: int = VAL_ROWS) -> np.ndarray:
    """The training-file rows of the validation split: a seeded draw of ``val_rows`` of ``n``, sorted."""
    if not 0 < val_rows < n:
        raise UserError(f"val_rows={val_rows} must be between 1 and {n - 1} (the training file has {n} rows)")
    return np.sort(np.random.default_rng(seed).choice(n, size=val_rows, replace=False))


def split_rows(n: int, split: str, seed: int, val_rows: int = VAL_ROWS) -> np.ndarray:
    """Rows of the training file that ``split`` ("train" or "val") holds, in file order."""
    val = val_indices(n, seed, val_rows)
    if split == "val":
        return val
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep)


def load_fashion_mnist(split: str = "train", *, root: str | os.PathLike | None = None, seed: int = 0,
                       val_rows: int = VAL_ROWS, limit: int | None = None) -> IdxDataset:
    """Fashion-MNIST ``split`` (train / val / test); images 1×28×28 float32 in [0, 1], labels 0..9. ``limit``: the
    split's first rows only (a quick run, e.g. the main job's --smoke); the splits stay disjoint."""
    if limit is not None and limit < 1:
        raise UserError(f"limit={limit} must be at least 1 (or unset for the whole split)")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for fashion_mnist; valid: {', '.join(SPLITS)}")
    root = Path(root if root is not None else default_root())
    file_split = "test" if split == "test" else "train"
    try:
        images_path, labels_path = (find_idx_file(root, stem) for stem in FILES[file_split])
    except UserError:
        raise UserError(f"Fashion-MNIST not found in {root} (no {FILES[file_split][0]}.gz): {INSTALL_HINT}, or set "
                        f"data.options.root / {ROOT_ENV} to a directory with the four *-ubyte.gz files") from None
    images = parse_idx(images_path, ndim=3)
    labels = parse_idx(labels_path, ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise UserError(f"{labels_path}: label {labels.max()}; Fashion-MNIST has {len(CLASS_NAMES)} classes")
    rows = np.arange(len(labels)) if split == "test" else split_rows(len(labels), split, seed, val_rows)
    rows = rows[:limit]
    return IdxDataset(
        name="fashion_mnist", split=split, images=images[rows][:, None, :, :], labels=labels[rows],
        class_names=list(CLASS_NAMES), ids=np.array([f"fashion_mnist/{file_split}/{i:05d}" for i in rows]),
        source=str(root.resolve()))
