"""Scenes rows: the seeded dataset of one- or two-object images with their ground truth (see the package
docstring for the data, the discriminative attributes and determinism)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from interp_ray.data.base import ImageDataset
from interp_ray.data.scenes.drawing import (add_noise, draw_object, place_objects, sample_background, sample_style,
                                            tight_box)
from interp_ray.data.scenes.tables import (_LABEL_STREAM, _MODE_ONE, _MODE_TWO, _ROW_STREAM, _SALT, _SPLIT_CODES,
                                           ATTRIBUTE_KINDS, CLASS_NAMES, DEFAULT_ROWS, GENERATOR_VERSION, MAX_SENTENCES,
                                           MIN_SIZE, NUM_CLASSES, SPLITS, attribute_indices, discriminative_kinds,
                                           make_sentences)
from interp_ray.errors import UserError

# ---------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------


def _row_rng(seed: int, split: str, mode: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SALT, seed, _SPLIT_CODES[split], mode, _ROW_STREAM, index]))


def _block_labels(seed: int, split: str, mode: int, block: int) -> np.ndarray:
    """The class order of indices [12·block, 12·block + 12): a permutation, so labels are exactly balanced."""
    ss = np.random.SeedSequence([_SALT, seed, _SPLIT_CODES[split], mode, _LABEL_STREAM, block])
    return np.random.default_rng(ss).permutation(NUM_CLASSES)


def row_labels(seed: int, split: str, mode: int, indices: np.ndarray) -> np.ndarray:
    """int64 labels of ``indices``; each 12-block's permutation is drawn once per call."""
    blocks: dict[int, np.ndarray] = {}
    out = np.empty(len(indices), dtype=np.int64)
    for j, index in enumerate(indices):
        block, pos = divmod(int(index), NUM_CLASSES)
        if block not in blocks:
            blocks[block] = _block_labels(seed, split, mode, block)
        out[j] = blocks[block][pos]
    return out


def _scene_classes(rng: np.random.Generator, label: int, two_objects: bool) -> list[int]:
    if not two_objects:
        return [label]
    other = int(rng.integers(NUM_CLASSES - 1))
    return [label, other + (other >= label)]  # uniform over the other classes


def _check_options(split: str, seed: int, size: int, sentences_per_image: int) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} for scenes; valid: {', '.join(SPLITS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if size < MIN_SIZE:
        raise UserError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if not 1 <= sentences_per_image <= MAX_SENTENCES:
        raise UserError(f"sentences_per_image must be in 1..{MAX_SENTENCES}, got {sentences_per_image}")


def _empty_extras(n: int, size: int, k: int, frames: int | None = None) -> dict[str, np.ndarray]:
    t = () if frames is None else (frames,)
    return {
        "boxes": np.full((n, *t, 2, 4), -1, dtype=np.int32),
        "box_labels": np.full((n, 2), -1, dtype=np.int64),
        "masks": np.zeros((n, *t, 2, size, size), dtype=bool),
        "attributes": np.zeros((n, len(ATTRIBUTE_KINDS)), dtype=np.int64),
        "discriminative": np.zeros((n, len(ATTRIBUTE_KINDS)), dtype=bool),
    }


def _fill_class_extras(out: dict[str, np.ndarray], j: int, classes: list[int]) -> None:
    out["box_labels"][j, : len(classes)] = classes
    out["attributes"][j] = attribute_indices(classes[0])
    kinds = discriminative_kinds(classes[0])
    out["discriminative"][j] = [k in kinds for k in ATTRIBUTE_KINDS]


def _sentence_array(rows: list[list[str]], k: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, k), dtype="<U1")
    return np.array(rows, dtype=str)


class ScenesDataset(ImageDataset):
    """``n`` generated scenes of one split; rows are drawn on demand by ``get_batch`` (nothing is stored)."""

    name = "scenes"

    def __init__(self, split: str = "train", n: int | None = None, *, seed: int = 0, size: int = 64,
                 two_objects: bool = False, sentences_per_image: int = 5):
        _check_options(split, seed, size, sentences_per_image)
        self.split, self.seed, self.size = split, int(seed), int(size)
        self.n = DEFAULT_ROWS[split] if n is None else int(n)
        if self.n < 0:
            raise UserError(f"n must be >= 0, got {n}")
        self.two_objects = bool(two_objects)
        self.sentences_per_image = int(sentences_per_image)
        self.mode = _MODE_TWO if self.two_objects else _MODE_ONE
        self.class_names = list(CLASS_NAMES)
        self.image_shape = (3, self.size, self.size)

    def __len__(self) -> int:
        return self.n

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"indices must be in [0, {self.n}), got {idx.min()}..{idx.max()}")
        return idx

    def row_id(self, index: int) -> str:
        kind = "scenes2" if self.two_objects else "scenes"
        return f"{kind}/{self.split}/s{self.seed}/{index:07d}"

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        idx = self._indices(indices)
        n, s, k = len(idx), self.size, self.sentences_per_image
        labels = row_labels(self.seed, self.split, self.mode, idx)
        images = np.empty((n, 3, s, s), dtype=np.float32)
        out = _empty_extras(n, s, k)
        sentences = []
        for j, (index, label) in enumerate(zip(idx, labels)):
            rng = _row_rng(self.seed, self.split, self.mode, int(index))
            classes = _scene_classes(rng, int(label), self.two_objects)
            image = sample_background(rng, s)
            styles = [sample_style(rng, c, s) for c in classes]
            for o, (style, (xr, yr)) in enumerate(zip(styles, place_objects(rng, styles, s))):
                mask = draw_object(image, style, rng.uniform(*xr), rng.uniform(*yr))
                out["masks"][j, o] = mask
                out["boxes"][j, o] = tight_box(mask)
            images[j] = add_noise(rng, image)
            _fill_class_extras(out, j, classes)
            sentences.append(make_sentences(classes[0], rng, k))
        return {"id": np.array([self.row_id(int(i)) for i in idx], dtype=str), "image": images, "label": labels,
                **out, "sentences": _sentence_array(sentences, k)}

    def describe(self) -> dict:
        return {**super().describe(), "seed": self.seed, "two_objects": self.two_objects,
                "sentences_per_image": self.sentences_per_image, "generator_version": GENERATOR_VERSION}


def load_scenes(split: str = "train", *, n: int | None = None, seed: int = 0, size: int = 64,
                two_objects: bool = False, sentences_per_image: int = 5) -> ScenesDataset:
    """Generated attribute scenes (see the module docstring). ``n`` defaults to 6000 / 1000 / 1000 rows for
    train / val / test; ``sentences_per_image`` is the K of the (N, K) ``sentences`` array (1..10, default 5)."""
    return ScenesDataset(split, n, seed=seed, size=size, two_objects=two_objects,
                         sentences_per_image=sentences_per_image)
