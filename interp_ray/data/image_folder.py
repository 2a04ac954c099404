"""A torchvision-ImageFolder directory: ``root/<split>/<class>/<image>``, or ``root/<class>/<image>`` without splits.

``root`` is a local directory or a URI that ``interp_ray.storage`` opens (``s3://bucket/prefix``, with
``INTERP_RAY_S3_ENDPOINT`` for S3-compatible stores). Only the file list is built at load time, in one listing (on
the driver); pixels are read and decoded per batch, where ``get_batch`` runs (Ray Data's loader tasks), so a folder
far larger than memory works and decoding runs in parallel, never in the model's actors.

Captions (for InterpNET and Dong et al.): ``captions.jsonl`` at the root, or the file the ``captions`` option names,
is read at load time and joined to the rows by their id (the path relative to the root); each row then carries its
captions as ``sentences``. The file's schema and checks: ``interp_ray.data.captions``.
"""

from __future__ import annotations

import functools
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from interp_ray.data.base import DecodedImageDataset
from interp_ray.data.captions import CAPTIONS_FILE, Captioned, CaptionsFile, parse_captions
from interp_ray.data.images import (IMAGE_EXTENSIONS, as_hw, channels_for, decode_image, has_image_extension,
                                    read_image_file, stack_images)
from interp_ray.errors import UserError
from interp_ray.storage import filesystem, is_remote, map_ordered

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


def remote_files(root: str, extensions: Sequence[str]) -> tuple[Any, str, list[str]]:
    """(filesystem, root inside it, image paths relative to it, sorted) of a folder on object storage: one
    recursive listing. Hidden files and directories are left out, as ``list_images`` does locally."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(root)
    try:
        info = fs.get_file_info(inner)
        if info.type != pafs.FileType.Directory:
            raise UserError(f"image folder root {root} does not exist (or is not a directory)")
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except OSError as exc:
        raise UserError(f"image folder root {root}: cannot list it ({' '.join(str(exc).split())[:300]})") from None
    rels = [posixpath.relpath(i.path, inner) for i in infos if i.type == pafs.FileType.File]
    rels = [r for r in rels if not any(p.startswith(".") for p in r.split("/")) and has_image_extension(r, extensions)]
    return fs, inner, sorted(rels)


def remote_layout(root: str, rels: list[str], split: str) -> tuple[str, list[str]]:
    """(prefix of the split's class directories, "" for a flat root; class names) from a file listing, by the same
    rules as a local folder: split directories if any of ``KNOWN_SPLITS`` is present, classes their union."""
    tops = sorted({r.split("/")[0] for r in rels if "/" in r})
    present = [t for t in tops if t.lower() in KNOWN_SPLITS]
    if not present:
        if split != FLAT_SPLIT:
            raise UserError(f"image folder {root} has no split directories ({', '.join(KNOWN_SPLITS)}), so its only "
                            f"split is {FLAT_SPLIT!r}; got {split!r}")
        return "", tops
    if split not in present:
        raise UserError(f"unknown split {split!r} for image folder {root}; valid: {', '.join(present)}")
    names = sorted({r.split("/")[1] for r in rels if r.count("/") >= 2 and r.split("/")[0] in present})
    return split + "/", names


@dataclass
class ImageFolderDataset(Captioned, DecodedImageDataset):
    name: str
    split: str
    root: str  # an absolute local directory or a URI
    paths: list[str]  # relative to root, POSIX separators; also the row ids
    labels: np.ndarray
    class_names: list[str]
    image_size: int
    mode: str = "RGB"
    # (pyarrow filesystem, root inside it) of a remote root, opened on the driver: it pickles with its endpoint, so a
    # Ray task reads from where the driver listed whatever its own environment says (as the Parquet loader's files)
    remote: tuple[Any, str] | None = None
    captions: np.ndarray | None = None  # N × K caption strings ("" pads), joined to ``paths`` at load time
    captions_source: dict[str, str] | None = None  # the captions file and its digest (part of the identity)

    def __post_init__(self):
        self.image_shape = (channels_for(self.mode), self.image_size, self.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, rel: str, pixels: bool = False) -> np.ndarray:
        """One image, decoded and resized (float32, or uint8 ``pixels``); an unreadable one is a UserError naming it."""
        if self.remote is None:
            return read_image_file(Path(self.root) / rel, self.image_size, self.mode, pixels=pixels)
        fs, inner = self.remote
        try:
            with fs.open_input_file(posixpath.join(inner, rel)) as f:
                data = f.read()
        except OSError as exc:
            raise UserError(f"{rel}: cannot read it ({' '.join(str(exc).split())[:300]})") from None
        return decode_image(data, self.image_size, self.mode, name=rel, pixels=pixels)

    def _rows(self, indices, *, pixels: bool) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        rel = [self.paths[i] for i in idx]
        read = functools.partial(self.read, pixels=pixels)
        images = [read(p) for p in rel] if self.remote is None else map_ordered(read, rel)
        out = {"id": np.array(rel, dtype=str), "image": stack_images(images, rel, self.image_shape, pixels=pixels),
               "label": self.labels[idx]}
        return self.with_captions(out, idx)

    def describe(self) -> dict[str, Any]:
        # the captions file's digest only when there is one: a folder without captions keeps its store keys
        return {**super().describe(), "source": self.root,
                **({"captions": self.captions_source} if self.captions_source else {})}


def load_image_folder(split: str = "train", *, root: str | os.PathLike, image_size: int = 64,
                      extensions: Sequence[str] = IMAGE_EXTENSIONS, mode: str = "RGB",
                      captions: str | bool | None = None) -> ImageFolderDataset:
    """Images under ``root/<split>/<class>/`` (or ``root/<class>/``), resized to image_size², ``mode`` "RGB" or "L";
    ``root`` local or a URI (``s3://…``). ``captions``: None reads ``root/captions.jsonl`` when it is there, a path
    (relative to ``root``, absolute, or a URI) reads that file (which must exist), False reads none."""
    channels_for(mode)
    as_hw(image_size)  # a bad size fails now, not at the first batch
    if isinstance(extensions, str):  # ".png,.jpg" from a command line, not a sequence of characters
        extensions = tuple(e.strip() for e in extensions.split(","))
    if is_remote(root):
        root = str(root)
        fs, inner, rels = remote_files(root, extensions)
        prefix, class_names = remote_layout(root, rels, split)
        index = {n: i for i, n in enumerate(class_names)}
        chosen = [r for r in rels if r.startswith(prefix) and r[len(prefix):].count("/") >= 1]
        paths, labels = chosen, [index[r[len(prefix):].split("/")[0]] for r in chosen]
        where, resolved, remote = f"{root.rstrip('/')}/{prefix}", root, (fs, inner)
        every = set(rels)
        exists = every.__contains__
    else:
        root_path = Path(root)
        if not root_path.is_dir():
            raise UserError(f"image folder root {root} does not exist (or is not a directory)")
        split_dir = find_split_dir(root_path, split)
        class_names = class_names_for(root_path, split_dir)
        paths, labels = [], []
        for label, name in enumerate(class_names):
            if not (split_dir / name).is_dir():
                continue  # a class present only in another split
            for path in list_images(split_dir / name, extensions):
                paths.append(path.relative_to(root_path).as_posix())
                labels.append(label)
        where, resolved, remote = str(split_dir), str(root_path.resolve()), None

        def exists(rel: str) -> bool:
            return has_image_extension(rel, extensions) and (root_path / rel).is_file()
    if not paths:
        raise UserError(f"no images with extensions {', '.join(extensions)} in class directories under {where}")
    found = read_folder_captions(str(root), remote, captions)
    table = source = None
    if found is not None:
        found.check_images(exists)
        table, source = found.table(paths), {"file": found.source, "sha256": found.digest}
    return ImageFolderDataset(name="image_folder", split=split, root=resolved, paths=paths,
                              labels=np.asarray(labels, dtype=np.int64), class_names=class_names,
                              image_size=int(image_size), mode=mode, remote=remote, captions=table,
                              captions_source=source)


def read_folder_captions(root: str, remote: tuple[Any, str] | None, option: str | bool | None
                         ) -> CaptionsFile | None:
    """The folder's captions file (``load_image_folder``'s ``captions`` option), parsed; None when there is none."""
    import pyarrow.fs as pafs

    from interp_ray.storage import filesystem

    if option is False or option == "":
        return None
    if option is None or option is True:
        named, location = False, CAPTIONS_FILE
    elif isinstance(option, (str, os.PathLike)):
        named, location = True, os.fspath(option)
    else:
        raise UserError(f"captions must be a path to a {CAPTIONS_FILE}-style file (or false), got {option!r}")
    if is_remote(location) or os.path.isabs(location):
        fs, inner = filesystem(location)
        shown = location
    elif remote is not None:
        fs, inner = remote[0], posixpath.join(remote[1], location)
        shown = f"{root.rstrip('/')}/{location}"
    else:
        fs, inner = filesystem(os.path.join(root, location))
        shown = os.path.join(root, location)
    try:
        kind = fs.get_file_info(inner).type
        if kind != pafs.FileType.File:
            if named or option is True:
                raise UserError(f"captions file {shown} does not exist")
            return None
        with fs.open_input_file(inner) as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"captions file {shown}: cannot read it ({' '.join(str(exc).split())[:300]})") from None
    return parse_captions(data, shown)
