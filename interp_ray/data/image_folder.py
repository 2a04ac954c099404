"""A torchvision-ImageFolder directory: ``root/<split>/<class>/<image>``, or ``root/<class>/<image>`` without splits.

Only the file list is built at load time; pixels are decoded per batch, so a folder far larger than memory works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from interp_ray.data.base import ImageDataset
from interp_ray.data.images import (IMAGE_EXTENSIONS, as_hw, channels_for, has_image_extension, read_image_file,
                                    stack_images)
from interp_ray.errors import UserError

# Subdirectory names taken to mean "this root is split into train/val/test" rather than "these are classes".
KNOWN_SPLITS = ("train", "val", "valid", "validation", "test")
# A root without split dirs is one split; it answers to this name only, so asking for "test" cannot silently
# evaluate on the training images.
FLAT_SPLIT = "train"


def subdirs(path: Path) -> list[str]:
    """Visible subdirectory names, sorted."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def split_dirs(root: Path) -> list[str]:
    return [d for d in subdirs(root) if d.lower() in KNOWN_SPLITS]


def find_split_dir(root: Path, split: str) -> Path:
    """The directory whose subdirectories are the classes for ``split``."""
    present = split_dirs(root)
    if present:
        if (root / split).is_dir():
            return root / split
        raise UserError(f"unknown split {split!r} for image folder {root}; valid: {', '.join(present)}")
    if split != FLAT_SPLIT:
        raise UserError(f"image folder {root} has no split directories ({', '.join(KNOWN_SPLITS)}), so its only "
                        f"split is {FLAT_SPLIT!r}; got {split!r}")
    return root


def class_names_for(root: Path, split_dir: Path) -> list[str]:
    """Sorted class names: the union over all split dirs, so a class missing from one split keeps every label index
    the same in every split (a model trained on "train" is scored on "test" with the same labels)."""
    if split_dir == root:
        return subdirs(root)
    splits = set(split_dirs(root)) | {split_dir.name}
    return sorted({c for s in splits for c in subdirs(root / s)})


def list_images(class_dir: Path, extensions: Sequence[str]) -> list[Path]:
    """Image files under ``class_dir`` (recursively, following links, as torchvision does), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and has_image_extension(f, extensions)]
    return sorted(found)


@dataclass
class ImageFolderDataset(ImageDataset):
    name: str
    split: str
    root: str
    paths: list[str]  # relative to root, POSIX separators; also the row ids
    labels: np.ndarray
    class_names: list[str]
    image_size: int
    mode: str = "RGB"

    def __post_init__(self):
        self.image_shape = (channels_for(self.mode), self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        rel = [self.paths[i] for i in idx]
        images = [read_image_file(Path(self.root) / p, self.image_size, self.mode) for p in rel]
        return {"id": np.array(rel, dtype=str), "image": stack_images(images, rel, self.image_shape),
                "label": self.labels[idx]}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.root}


def load_image_folder(split: str = "train", *, root: str | os.PathLike, image_size: int = 64,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS, mode: str = "RGB") -> ImageFolderDataset:
    """Images under ``root/<split>/<class>/`` (or ``root/<class>/``), resized to image_size², ``mode`` "RGB" or "L"."""
    channels_for(mode)
    as_hw(image_size)
    if isinstance(extensions, str):  # ".png,.jpg" from a command line, not a sequence of characters
        extensions = tuple(e.strip() for e in extensions.split(","))  # a bad size fails now, not at the first batch
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"image folder root {root} is not a directory")
    split_dir = find_split_dir(root_path, split)
    class_names = class_names_for(root_path, split_dir)
    paths, labels = [], []
    for label, name in enumerate(class_names):
        if not (split_dir / name).is_dir():
            continue  # a class present only in another split
        for path in list_images(split_dir / name, extensions):
            paths.append(path.relative_to(root_path).as_posix())
            labels.append(label)
    if not paths:
        raise UserError(f"no images with extensions {', '.join(extensions)} in class directories under {split_dir}")
    return ImageFolderDataset(name="image_folder", split=split, root=str(root_path.resolve()), paths=paths,
                              labels=np.asarray(labels, dtype=np.int64), class_names=class_names,
                              image_size=int(image_size), mode=mode)
