"""MNIST (and the IDX-format look-alikes: Fashion-MNIST, KMNIST …) read from the original IDX files.

IDX format (LeCun): two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension, then the data. The files may be gzipped, as they are distributed. The whole set is
60,000 × 28 × 28 bytes, so it is read eagerly and kept as uint8.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from interp_ray.data.base import ArrayDataset
from interp_ray.errors import UserError

# split -> (images file, labels file), without the optional ".gz".
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UBYTE = 0x08
# Where torchvision's MNIST(root) keeps the raw files, so a root prepared by torchvision also works.
SUBDIRS = (".", "MNIST/raw", "raw")


@dataclass
class IdxDataset(ArrayDataset):
    """An ArrayDataset that also records which directory it was read from."""

    source: str = ""

    def describe(self) -> dict[str, Any]:
        # Without the source, MNIST and Fashion-MNIST (same shapes, same default class names) would look alike.
        return {**super().describe(), "source": self.source}


def find_idx_file(root: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` under root (or torchvision's raw dir); missing → UserError naming what was looked for."""
    for sub in SUBDIRS:
        for name in (stem, stem + ".gz"):
            path = root / sub / name
            if path.is_file():
                return path
    raise UserError(f"missing MNIST file {stem} (or {stem}.gz) in {root}")


def read_bytes(path: Path) -> bytes:
    """The file's content, un-gzipped when it is gzipped (decided by its magic bytes, not only its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: corrupt gzip data ({exc})") from None


def parse_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions; a bad header or size is a UserError naming the file."""
    data = read_bytes(path)
    if len(data) < 4:
        raise UserError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, dtype, got_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise UserError(f"{path}: not an IDX file (magic number {data[:4].hex()} should start with 0000)")
    if dtype != UBYTE:
        raise UserError(f"{path}: IDX data type 0x{dtype:02x}; only unsigned bytes (0x08) are supported")
    if got_ndim != ndim:
        raise UserError(f"{path}: IDX file has {got_ndim} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: IDX header truncated ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        shape = "×".join(map(str, dims))
        raise UserError(f"{path}: IDX header says {shape} = {expected} bytes of data, file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def resolve_class_names(labels: np.ndarray, class_names: Sequence[str] | None, path: Path) -> list[str]:
    """The given names, or "0".."9" (more if a label is larger); a label without a name is a UserError."""
    top = int(labels.max()) if len(labels) else 0
    if class_names is None:
        return [str(i) for i in range(max(10, top + 1))]
    names = [c.strip() for c in class_names.split(",")] if isinstance(class_names, str) else list(class_names)
    if top >= len(names):
        raise UserError(f"{path}: label {top} but only {len(names)} class_names were given")
    return names


def load_mnist_idx(split: str = "train", *, root: str | os.PathLike,
                   class_names: Sequence[str] | None = None) -> IdxDataset:
    """The IDX files in ``root``: split "train" (train-*) or "test" (t10k-*); images 1×28×28 in [0, 1]."""
    if split not in FILES:
        raise UserError(f"unknown split {split!r} for mnist_idx; valid: {', '.join(FILES)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"MNIST root {root} is not a directory")
    images_path, labels_path = (find_idx_file(root, stem) for stem in FILES[split])
    images = parse_idx(images_path, ndim=3)
    labels = parse_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise UserError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return IdxDataset(
        name="mnist_idx", split=split, images=images[:, None, :, :], labels=labels.astype(np.int64),
        class_names=resolve_class_names(labels, class_names, labels_path),
        ids=np.array([f"mnist/{split}/{i:05d}" for i in range(len(labels))]), source=str(root.resolve()))
