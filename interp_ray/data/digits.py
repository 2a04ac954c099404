"""scikit-learn's digits: 1,797 real 8×8 handwritten digits, the embedded default. Fixed, seeded, stratified split."""

from __future__ import annotations

import numpy as np

from interp_ray.data.base import ArrayDataset
from interp_ray.errors import UserError

SPLITS = ("train", "val", "test")
# Fractions of the whole set; stratified so every class appears in every split.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=TEST_FRACTION, stratify=labels, random_state=seed)
    val_share = VAL_FRACTION / (1.0 - TEST_FRACTION)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def load_digits(split: str = "train", *, seed: int = 0) -> ArrayDataset:
    from sklearn.datasets import load_digits as sk_load_digits

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for digits; valid: {', '.join(SPLITS)}")
    raw = sk_load_digits()
    images = (raw.images.astype(np.float32) / 16.0)[:, None, :, :]  # pixel values are 0..16
    labels = raw.target.astype(np.int64)
    idx = split_indices(labels, seed)[split]
    return ArrayDataset(
        name="digits", split=split, images=images[idx], labels=labels[idx],
        class_names=[str(d) for d in range(10)], ids=np.array([f"digits/{i:04d}" for i in idx]))
