"""WebDataset tar shards, local or on object storage, read with Python's ``tarfile`` (no ``webdataset`` package).

The standard layout: shards ``shard-000000.tar`` … whose members are grouped into samples by key (the member name up
to the first dot of its base name): ``<key>.jpg|png|…`` holds the image, ``<key>.cls`` the class index as text, or
``<key>.json`` an object whose ``label`` (or ``cls``/``class``) is an index or a class name.

``path`` is a brace pattern (``s3://b/shards-{000000..000009}.tar``), one ``.tar``, a directory of ``.tar`` files
(split by ``<split>/`` subdirectories or ``<split>-…`` file names, as the Parquet loader does), or a list of shards.
Class names: ``class_names`` given, else a ``classes.txt`` (one per line) or ``classes.json`` (a list, or
name → index) beside the shards, else the indices as text (``.cls``) or the sorted names (``.json`` names).

Loading streams each shard once (on the driver) to index its samples: where each image's bytes start and how long
they are, and the small label members. ``get_batch`` then reads only the images it needs, by offset, and decodes them
where it runs (Ray Data's loader tasks), so no shard is ever held in memory.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from interp_ray.data.base import DecodedImageDataset
from interp_ray.data.images import IMAGE_EXTENSIONS, as_hw, channels_for, decode_image, stack_images
from interp_ray.data.parquet import select_split  # the same split rule as a directory of Parquet files
from interp_ray.errors import UserError
from interp_ray.storage import READ_THREADS, filesystem, is_remote, map_ordered

LABEL_SUFFIXES = ("cls", "json")
JSON_LABEL_KEYS = ("label", "cls", "class")
CLASS_FILES = ("classes.txt", "classes.json")
MAX_OPEN_FILES = 16
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class Sample:
    shard: int     # index into the dataset's shards
    offset: int    # where the image's bytes start in the shard
    size: int
    key: str


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → ``a-000.tar``, ``a-001.tar``, ``a-002.tar`` (zero padding kept; several ranges nest)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise UserError(f"shard pattern {pattern}: range {{{m.group(1)}..{m.group(2)}}} runs backwards")
    width = len(m.group(1)) if m.group(1).startswith("0") else 0
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [p for i in range(lo, hi + 1) for p in expand_braces(f"{head}{i:0{width}d}{tail}")]


def find_shards(path: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> list[str]:
    """The shard locations (local paths or URIs) for ``split``; a location that does not exist is a UserError naming
    it, before anything is read."""
    import pyarrow.fs as pafs

    given = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
    if not given:
        raise UserError("webdataset path is an empty list; give a shard, a brace pattern, a directory or a list")
    if len(given) == 1 and _BRACE.search(given[0]) is None:
        fs, inner = filesystem(given[0])
        info = _info(fs, inner, given[0])
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"webdataset path {given[0]} does not exist")
        if info.type == pafs.FileType.Directory:
            return shards_in_directory(fs, inner, given[0], split)
    shards = [s for p in given for s in expand_braces(p)]
    for shard in shards:
        fs, inner = filesystem(shard)
        if _info(fs, inner, shard).type != pafs.FileType.File:
            raise UserError(f"webdataset shard {shard} does not exist")
    return shards


def _info(fs: Any, inner: str, location: str):
    try:
        return fs.get_file_info(inner)
    except OSError as exc:
        raise UserError(f"webdataset path {location}: cannot reach it ({' '.join(str(exc).split())[:300]})") from None


def shards_in_directory(fs: Any, inner: str, location: str, split: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    rels = sorted(posixpath.relpath(i.path, inner) for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(".tar")
                  and not posixpath.basename(i.path).startswith("."))
    if not rels:
        raise UserError(f"no .tar shards under {location}")
    chosen = select_split(rels, split, location, kind="webdataset", suffix=".tar")
    head, sep, query = location.partition("?")
    return ["/".join([head.rstrip("/"), r]) + sep + query if "://" in location else posixpath.join(inner, r)
            for r in chosen]


def sample_key(member: str) -> tuple[str, str]:
    """(key, suffix) of a member name, as WebDataset groups them: the suffix starts at the base name's first dot."""
    directory, base = posixpath.split(member)
    stem, _, suffix = base.partition(".")
    return posixpath.join(directory, stem), suffix.lower()


def index_shard(shard: str, extensions: Sequence[str]) -> list[tuple[str, int, int, str | None, Any]]:
    """One streaming pass over a shard: per sample (key, image offset, image size, label kind, label value)."""
    fs, inner = filesystem(shard)
    image_suffixes = {e.lower().lstrip(".") for e in extensions}
    samples: dict[str, dict[str, Any]] = {}
    try:
        # buffered: tarfile reads 512-byte headers, and each unbuffered read of a remote object is a request
        with fs.open_input_stream(inner, compression=None, buffer_size=1 << 20) as stream, \
                tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, suffix = sample_key(member.name)
                entry = samples.setdefault(key, {})
                if suffix in image_suffixes and "image" not in entry:
                    entry["image"] = (member.offset_data, member.size)
                elif suffix in LABEL_SUFFIXES and "label" not in entry:
                    raw = tar.extractfile(member).read()
                    entry["label"] = (suffix, raw.decode("utf-8", errors="replace"))
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"webdataset shard {shard}: not a readable tar file ({' '.join(str(exc).split())[:300]})"
                        ) from None
    out = []
    for key, entry in samples.items():
        if "image" not in entry:
            continue  # a sample without an image (metadata only) is not a row
        if "label" not in entry:
            raise UserError(f"webdataset shard {shard}: sample {key!r} has no .cls or .json label")
        out.append((key, *entry["image"], *entry["label"]))
    return out


def parse_label(kind: str, raw: str, where: str) -> int | str:
    """A ``.cls`` text (an index) or a ``.json`` label (an index or a class name)."""
    if kind == "cls":
        try:
            return int(raw.strip())
        except ValueError:
            raise UserError(f"{where}.cls: {raw.strip()[:40]!r} is not a class index") from None
    try:
        value = json.loads(raw)
    except ValueError:
        raise UserError(f"{where}.json: not valid JSON") from None
    if isinstance(value, dict):
        value = next((value[k] for k in JSON_LABEL_KEYS if k in value), None)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{where}.json: no integer or string under {', '.join(JSON_LABEL_KEYS)}")
    return value


def read_class_file(shards: list[str]) -> list[str] | None:
    """Class names from ``classes.txt``/``classes.json`` beside the first shard, if there is one."""
    import pyarrow.fs as pafs

    head, sep, query = shards[0].partition("?")
    for name in CLASS_FILES:
        location = head.rsplit("/", 1)[0] + "/" + name + sep + query if "/" in head else name
        fs, inner = filesystem(location)
        if fs.get_file_info(inner).type != pafs.FileType.File:
            continue
        with fs.open_input_stream(inner) as f:
            text = f.read().decode("utf-8")
        if name.endswith(".txt"):
            return [line.strip() for line in text.splitlines() if line.strip()]
        try:
            value = json.loads(text)
        except ValueError:
            raise UserError(f"{location}: not valid JSON") from None
        if isinstance(value, dict):  # name -> index
            return [n for n, _ in sorted(value.items(), key=lambda kv: int(kv[1]))]
        if isinstance(value, list):
            return [str(v) for v in value]
        raise UserError(f"{location}: expected a list of names or an object name → index")
    return None


@dataclass
class WebDatasetImages(DecodedImageDataset):
    name: str
    split: str
    shards: list[str]
    samples: list[Sample]
    labels: np.ndarray
    class_names: list[str]
    image_size: int
    mode: str = "RGB"

    def __post_init__(self):
        self.image_shape = (channels_for(self.mode), self.image_size, self.image_size)
        # (filesystem, path) per shard, opened on the driver: a filesystem pickles with its endpoint, so a Ray task
        # reads from where the driver listed (as the Parquet loader's files do)
        self.locations = [filesystem(s) for s in self.shards]
        self._open: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_open"}  # a worker opens its own handles

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _file(self, shard: int):
        if shard not in self._open:
            if len(self._open) >= MAX_OPEN_FILES:
                self._open.pop(next(iter(self._open))).close()
            fs, inner = self.locations[shard]
            self._open[shard] = fs.open_input_file(inner)
        return self._open[shard]

    def row_id(self, sample: Sample) -> str:
        return f"{posixpath.basename(self.shards[sample.shard].partition('?')[0])}/{sample.key}"

    def _rows(self, indices, *, pixels: bool) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        chosen = [self.samples[i] for i in idx]
        ids = [self.row_id(s) for s in chosen]
        files = {s.shard: self._file(s.shard) for s in chosen}  # opened here, read from threads below

        def read(item: tuple[Sample, str]) -> np.ndarray:
            sample, row_id = item
            try:
                data = files[sample.shard].read_at(sample.size, sample.offset)
            except OSError as exc:
                raise UserError(f"{row_id}: cannot read it ({' '.join(str(exc).split())[:300]})") from None
            return decode_image(data, self.image_size, self.mode, name=row_id, pixels=pixels)

        remote = any(is_remote(self.shards[s]) for s in files)
        images = map_ordered(read, list(zip(chosen, ids)), threads=READ_THREADS if remote else 1)
        return {"id": np.array(ids, dtype=str), "image": stack_images(images, ids, self.image_shape, pixels=pixels),
                "label": self.labels[idx]}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": [s.partition("?")[0] for s in self.shards]}


def load_webdataset(split: str = "train", *, path: str | os.PathLike | Sequence[str | os.PathLike],
                    image_size: int = 64, mode: str = "RGB", class_names: Sequence[str] | None = None,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS) -> WebDatasetImages:
    """WebDataset shards (see the module docstring), images resized to image_size², ``mode`` "RGB" or "L"."""
    channels_for(mode)
    as_hw(image_size)
    if isinstance(class_names, str):  # "cat,dog" from a command line
        class_names = [c.strip() for c in class_names.split(",")]
    if isinstance(extensions, str):
        extensions = tuple(e.strip() for e in extensions.split(","))
    shards = find_shards(path, split)
    names = list(class_names) if class_names is not None else read_class_file(shards)
    samples, values = [], []
    for s, shard in enumerate(shards):
        for key, offset, size, kind, raw in index_shard(shard, extensions):
            samples.append(Sample(s, offset, size, key))
            values.append(parse_label(kind, raw, f"{shard}: {key}"))
    if not samples:
        raise UserError(f"no samples with an image ({', '.join(extensions)}) in the shards of split {split!r}")
    labels, names = label_indices(values, names)
    return WebDatasetImages(name="webdataset", split=split, shards=shards, samples=samples, labels=labels,
                            class_names=names, image_size=int(image_size), mode=mode)


def label_indices(values: list[int | str], names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels (indices, or class names from ``.json``) → int64 indices and the class names."""
    if all(isinstance(v, int) for v in values):
        top = max(values)
        if min(values) < 0:
            raise UserError(f"webdataset: class index {min(values)} is negative")
        names = names or [str(i) for i in range(top + 1)]
        if top >= len(names):
            raise UserError(f"webdataset: class index {top} but only {len(names)} class names")
        return np.asarray(values, dtype=np.int64), names
    names = names or sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
        elif v in index:
            out.append(index[v])
        else:
            raise UserError(f"webdataset: label {v!r} is not a class name; valid: {', '.join(names)}")
    return np.asarray(out, dtype=np.int64), names
