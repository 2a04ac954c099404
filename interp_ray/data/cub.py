"""CUB-200-2011 birds, with the Reed et al. (2016) sentences and the Hendricks et al. (2016, GVE) splits.

On disk (as distributed):

    root/images.txt               "<image id> <class dir>/<file>.jpg"
    root/image_class_labels.txt   "<image id> <class id, 1-based>"
    root/train_test_split.txt     "<image id> <1 = train, 0 = test>"
    root/classes.txt              "<class id> <class dir, e.g. 001.Black_footed_Albatross>"
    root/bounding_boxes.txt       "<image id> <x> <y> <width> <height>"  (pixels of the original image)
    root/images/<class dir>/<file>.jpg
    sentences_root/text_c10/<class dir>/<file stem>.txt   (10 sentences, one a line)
    split_files: train_noCub.txt, val.txt, test.txt       ("<class dir>/<file>.jpg", one a line)

Only the tables are read at load time; pixels and sentences are read per batch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from interp_ray.data.base import DecodedImageDataset
from interp_ray.data.images import image_to_array, open_image, stack_images
from interp_ray.errors import UserError

TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")
CUB_SPLITS = {"train": 1, "test": 0}  # split -> is_training_image flag in train_test_split.txt
# GVE split names -> file names in a split directory; "train.txt" is the name some copies renamed it to.
GVE_SPLIT_FILES: dict[str, tuple[str, ...]] = {"train": ("train_noCub.txt", "train.txt"), "val": ("val.txt",),
                                               "test": ("test.txt",)}
NUM_SENTENCES = 10
# Control characters other than tab, newline, carriage return: their presence means a binary file, not text.
NON_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_table(path: Path, columns: int, convert: Callable[[str], Any] = str) -> dict[int, list]:
    """A CUB table "<id> <value> …" as {id: [convert(value), …]}; a malformed line is a UserError naming file and
    line."""
    if not path.is_file():
        raise UserError(f"missing CUB file {path}")
    rows: dict[int, list] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != columns + 1:
                raise ValueError
            rows[int(parts[0])] = [convert(p) for p in parts[1:]]
        except ValueError:
            raise UserError(f"{path}:{lineno}: expected '<id>' and {columns} value(s), got {line.strip()!r}") from None
    return rows


def class_display_name(class_dir: str) -> str:
    """"001.Black_footed_Albatross" -> "Black_footed_Albatross"."""
    return re.sub(r"^\d+\.", "", class_dir)


def normalise_split_line(line: str) -> str:
    """A split-file entry as it appears in images.txt (copies differ on a leading "./" or "images/")."""
    entry = line.strip().replace("\\", "/")
    for prefix in ("./", "images/"):
        if entry.startswith(prefix):
            entry = entry[len(prefix):]
    return entry


def resolve_split_file(split: str, split_files: str | os.PathLike | Mapping[str, Any]) -> Path:
    """The file listing ``split``'s images, from a {split: file} dict or a directory of GVE split files."""
    if isinstance(split_files, Mapping):
        if split not in split_files:
            raise UserError(f"unknown split {split!r} for cub; valid (from split_files): {', '.join(split_files)}")
        path = Path(split_files[split])
        if not path.is_file():
            raise UserError(f"missing CUB split file {path} for split {split!r}")
        return path
    directory = Path(split_files)
    if not directory.is_dir():
        raise UserError(f"split_files {directory} is neither a directory of split files nor a {{split: file}} dict")
    if split not in GVE_SPLIT_FILES:
        raise UserError(f"unknown split {split!r} for cub with split_files; valid: {', '.join(GVE_SPLIT_FILES)}")
    for name in GVE_SPLIT_FILES[split]:
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"missing CUB split file {' or '.join(GVE_SPLIT_FILES[split])} in {directory}")


def ids_from_split_file(path: Path, id_by_path: dict[str, int]) -> list[int]:
    """Image ids in the order the split file lists them; an entry not in images.txt is a UserError."""
    ids = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        entry = normalise_split_line(line)
        if not entry:
            continue
        if entry not in id_by_path:
            raise UserError(f"{path}:{lineno}: image {entry!r} is not listed in images.txt")
        ids.append(id_by_path[entry])
    if not ids:
        raise UserError(f"CUB split file {path} lists no images")
    return ids


def find_sentence_dir(sentences_root: str | os.PathLike) -> Path:
    """``sentences_root/text_c10``, or sentences_root itself when it already is that directory."""
    root = Path(sentences_root)
    if (root / "text_c10").is_dir():
        return root / "text_c10"
    if root.is_dir():
        return root
    raise UserError(f"sentences_root {root} is not a directory (expected one holding text_c10/<class dir>/*.txt)")


def read_sentences(path: Path, k: int) -> list[str]:
    """The first ``k`` non-empty lines of a sentence file, padded with ""; no sentences or binary data → UserError."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"missing CUB sentence file {path}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    bad = NON_TEXT.search(text)
    if bad:
        raise UserError(f"{path}: not a text file (control byte {ord(bad.group()):#04x} at offset {bad.start()})")
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise UserError(f"{path}: no sentences (expected one sentence a line)")
    return (sentences + [""] * k)[:k]


def scale_boxes(xywh: np.ndarray, sizes: np.ndarray, image_size: int) -> np.ndarray:
    """Boxes x, y, w, h in original pixels (N×4) → x0, y0, x1, y1 in the resized image (N×1×4 int32).

    The resize squashes each axis independently, so each axis scales by its own factor. Corners round outwards
    (floor the start, ceil the end) so the box still covers every resized pixel the bird touches, then clip to the
    image; the small slack keeps float noise such as 6.0000001 from widening a box by a pixel.
    """
    scale = image_size / sizes.astype(np.float64)  # N×2: width factor, height factor
    start = xywh[:, :2] * scale
    end = (xywh[:, :2] + xywh[:, 2:]) * scale
    slack = 1e-6
    boxes = np.concatenate([np.floor(start + slack), np.ceil(end - slack)], axis=1)
    return np.clip(boxes, 0, image_size).astype(np.int32)[:, None, :]


@dataclass
class CubDataset(DecodedImageDataset):
    name: str
    split: str
    root: str
    paths: list[str]  # relative to root/images, as in images.txt; also the row ids
    labels: np.ndarray
    boxes_xywh: np.ndarray  # N×4 float, original pixels
    class_names: list[str]
    image_size: int
    sentence_dir: str | None = None
    num_sentences: int = NUM_SENTENCES
    split_source: str = "train_test_split.txt"

    def __post_init__(self):
        self.image_shape = (3, self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, rel: str) -> Path:
        return Path(self.root) / "images" / rel

    def sentence_path(self, rel: str) -> Path:
        rel_path = Path(rel)
        return Path(self.sentence_dir) / rel_path.parent / (rel_path.stem + ".txt")

    def _rows(self, indices, *, pixels: bool) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        rel = [self.paths[i] for i in idx]
        images, sizes = [], []
        for r in rel:
            img = open_image(self.image_path(r))
            sizes.append(img.size)  # (width, height) before the resize, to scale the box
            images.append(image_to_array(img, self.image_size, "RGB", pixels=pixels))
        out = {"id": np.array(rel, dtype=str), "image": stack_images(images, rel, self.image_shape, pixels=pixels),
               "label": self.labels[idx],
               "boxes": scale_boxes(self.boxes_xywh[idx], np.array(sizes, dtype=np.int64).reshape(-1, 2),
                                    self.image_size)}
        if self.sentence_dir is not None:
            sentences = [read_sentences(self.sentence_path(r), self.num_sentences) for r in rel]
            out["sentences"] = np.array(sentences, dtype=str).reshape(len(rel), self.num_sentences)
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.root, "split_source": self.split_source,
                "sentences": self.sentence_dir is not None}


def load_cub(split: str = "train", *, root: str | os.PathLike, sentences_root: str | os.PathLike | None = None,
             split_files: str | os.PathLike | Mapping[str, Any] | None = None, image_size: int = 224,
             num_sentences: int = NUM_SENTENCES) -> CubDataset:
    """CUB-200-2011 ``split``: "train"/"test" by CUB's own flag, or the splits named by ``split_files`` (a directory
    of GVE files train_noCub.txt/val.txt/test.txt, or a {split: file} dict). Images RGB image_size², extras
    ``boxes`` (N×1×4) and, with ``sentences_root``, ``sentences`` (N×num_sentences)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"CUB root {root} is not a directory")
    if int(image_size) < 1 or int(num_sentences) < 1:
        raise UserError(f"image_size and num_sentences must be positive, got {image_size} and {num_sentences}")
    paths = {i: v[0] for i, v in read_table(root_path / "images.txt", 1).items()}
    labels = {i: v[0] for i, v in read_table(root_path / "image_class_labels.txt", 1, int).items()}
    flags = {i: v[0] for i, v in read_table(root_path / "train_test_split.txt", 1, int).items()}
    classes = {i: v[0] for i, v in read_table(root_path / "classes.txt", 1).items()}
    boxes = read_table(root_path / "bounding_boxes.txt", 4, float)

    if split_files is None:
        if split not in CUB_SPLITS:
            raise UserError(f"unknown split {split!r} for cub; valid: {', '.join(CUB_SPLITS)} "
                            "(pass split_files for the GVE train/val/test splits)")
        ids = sorted(i for i in paths if flags.get(i) == CUB_SPLITS[split])
        split_source = "train_test_split.txt"
    else:
        split_file = resolve_split_file(split, split_files)
        ids = ids_from_split_file(split_file, {p: i for i, p in paths.items()})
        split_source = str(split_file.resolve())

    class_ids = sorted(classes)
    label_index = {c: n for n, c in enumerate(class_ids)}  # CUB's 1-based class ids -> 0-based labels
    for table, values in (("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes)):
        missing = [i for i in ids if i not in values]
        if missing:
            raise UserError(f"{root_path / table} has no row for image id {missing[0]} ({paths[missing[0]]})")
    unknown = [i for i in ids if labels[i] not in label_index]
    if unknown:
        raise UserError(f"{root_path / 'image_class_labels.txt'}: class {labels[unknown[0]]} of image id {unknown[0]} "
                        "is not in classes.txt")

    dataset = CubDataset(
        name="cub", split=split, root=str(root_path.resolve()), paths=[paths[i] for i in ids],
        labels=np.array([label_index[labels[i]] for i in ids], dtype=np.int64),
        boxes_xywh=np.array([boxes[i] for i in ids], dtype=np.float64).reshape(-1, 4),
        class_names=[class_display_name(classes[c]) for c in class_ids], image_size=int(image_size),
        sentence_dir=None if sentences_root is None else str(find_sentence_dir(sentences_root)),
        num_sentences=int(num_sentences), split_source=split_source)
    check_first_row(dataset)
    return dataset


def check_first_row(dataset: CubDataset) -> None:
    """Fail at load, not at the first batch, when root or sentences_root points at the wrong directory."""
    if not len(dataset):
        return
    first = dataset.paths[0]
    if not dataset.image_path(first).is_file():
        raise UserError(f"missing CUB image {dataset.image_path(first)} (is root the CUB_200_2011 directory?)")
    if dataset.sentence_dir is not None and not dataset.sentence_path(first).is_file():
        raise UserError(f"missing CUB sentence file {dataset.sentence_path(first)} "
                        "(is sentences_root the directory holding text_c10?)")
