"""Images stored as encoded bytes (PNG, JPEG …) in Parquet files, local or on object storage.

``path`` is a file, a directory of files, or a list of files; local, or a URI that ``pyarrow.fs`` understands
(``s3://…``, ``gs://…``, ``file://…``), with credentials from the usual environment. Labels and ids are read at load
time (they are small); image bytes are read per batch, one row group at a time, so a dataset far larger than memory
works. The image column may hold raw bytes or, as Hugging Face datasets write it, a struct with a ``bytes`` field.

Split selection for a directory: ``path/<split>/…`` or files named ``<split>-…``/``<split>_…``/``<split>.…`` (the
Hugging Face layout, e.g. ``data/train-00000-of-00001.parquet``); a directory with neither is the single split
"train". An explicit file (or list of files) is whatever split you call it.

Captions (for InterpNET and Dong et al.): ``captions_column`` names a column holding each row's caption (a string)
or captions (a list of strings). It is read at load time with the labels, so each row carries its own captions as
``sentences``; a missing column, a null or an empty caption is a UserError naming the file and row.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from interp_ray.data.base import DecodedImageDataset
from interp_ray.data.captions import Captioned, caption_array, column_captions, is_caption_type
from interp_ray.data.images import as_hw, channels_for, decode_image, stack_images
from interp_ray.errors import UserError

KNOWN_SPLITS = ("train", "val", "valid", "validation", "test")
FLAT_SPLIT = "train"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
# A row group whose image column is at most this big (compressed) is read whole and kept until the next batch needs
# another one, since consecutive batches usually fall in the same group. A bigger one is streamed in small record
# batches so memory stays bounded even for a file written as a single huge row group.
MAX_WHOLE_GROUP_BYTES = 64 << 20
STREAM_ROWS = 256
MAX_OPEN_FILES = 16


@dataclass(frozen=True)
class ParquetFileRef:
    filesystem: Any  # pyarrow.fs.FileSystem (picklable, so a Ray worker can reopen the file)
    path: str  # inside filesystem
    name: str  # short name for ids and messages: relative to the directory given, or the file's base name


@dataclass(frozen=True)
class RowGroup:
    file: int  # index into the dataset's files
    index: int  # row group number inside the file
    start: int  # dataset row of its first row
    num_rows: int
    image_bytes: int  # compressed size of the image column chunk


def resolve_filesystem(location: str) -> tuple[Any, str]:
    """(filesystem, path inside it) for a local path or a URI; an unusable URI is a UserError."""
    from interp_ray.storage import filesystem

    return filesystem(location)


def is_data_file(path: str) -> bool:
    base = posixpath.basename(path)
    return base.lower().endswith(PARQUET_SUFFIXES) and not base.startswith((".", "_"))


def list_directory(fs: Any, directory: str) -> list[str]:
    """Parquet files under ``directory`` (recursively), as paths relative to it, sorted."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=True))
    rel = [posixpath.relpath(i.path, directory) for i in infos if i.type == pafs.FileType.File and is_data_file(i.path)]
    return sorted(rel)


def split_of(rel: str, split: str) -> bool:
    """Does the relative path ``rel`` belong to ``split`` (a directory of that name, or a ``<split>-`` file name)?"""
    *dirs, base = rel.split("/")
    return split in dirs or re.match(rf"{re.escape(split)}[-_.]", base) is not None


def select_split(rels: list[str], split: str, directory: str, *, kind: str = "parquet", suffix: str = ".parquet"
                 ) -> list[str]:
    """The files of ``split`` in a directory listing; see the module docstring for the rule (the WebDataset loader's
    too: ``kind`` and ``suffix`` name its files in the messages)."""
    chosen = [r for r in rels if split_of(r, split)]
    if chosen:
        return chosen
    present = [s for s in KNOWN_SPLITS if any(split_of(r, s) for r in rels)]
    if present:
        raise UserError(f"unknown split {split!r} for {kind} directory {directory}; valid: {', '.join(present)}")
    if split != FLAT_SPLIT:
        raise UserError(f"{kind} directory {directory} has no split directories or <split>-*{suffix} files, so its "
                        f"only split is {FLAT_SPLIT!r}; got {split!r} (or pass the file itself as path)")
    return rels


def find_files(path: str | os.PathLike | Sequence[str | os.PathLike], split: str) -> list[ParquetFileRef]:
    """The Parquet files for ``split`` from a file, a directory, or a list of files."""
    import pyarrow.fs as pafs

    locations = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not locations:
        raise UserError("parquet path is an empty list; give a file, a directory or a list of files")
    refs: list[ParquetFileRef] = []
    for location in map(os.fspath, locations):
        fs, inner = resolve_filesystem(location)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"parquet path {location} does not exist")
        if info.type == pafs.FileType.Directory:
            if len(locations) > 1:
                raise UserError(f"parquet path {location} is a directory; a list of paths must name files")
            rels = list_directory(fs, inner)
            if not rels:
                raise UserError(f"no {'/'.join(PARQUET_SUFFIXES)} files under {location}")
            refs += [ParquetFileRef(fs, posixpath.join(inner, r), r) for r in select_split(rels, split, location)]
        else:
            refs.append(ParquetFileRef(fs, inner, posixpath.basename(inner)))
    return refs


def open_parquet(ref: ParquetFileRef):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(ref.filesystem.open_input_file(ref.path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{ref.name}: not a readable Parquet file ({exc})") from None


def check_columns(pf, ref: ParquetFileRef, columns: Sequence[str]) -> None:
    present = pf.schema_arrow.names
    for column in columns:
        if column not in present:
            raise UserError(f"{ref.name}: no column {column!r}; columns present: {', '.join(present)}")


def check_image_type(pf, ref: ParquetFileRef, column: str) -> None:
    """Bytes, or a struct with a ``bytes`` field (Hugging Face's Image feature)."""
    import pyarrow as pa

    kind = pf.schema_arrow.field(column).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return
    raise UserError(f"{ref.name}: image column {column!r} has type {kind}; expected binary (encoded PNG/JPEG bytes) "
                    "or a struct with a 'bytes' field")


def column_bytes(pf, column: str, row_group: int) -> int:
    """Compressed size of ``column`` (all its leaf columns) in one row group."""
    meta = pf.metadata.row_group(row_group)
    leaves = (meta.column(j) for j in range(meta.num_columns))
    return sum(c.total_compressed_size for c in leaves if c.path_in_schema.split(".")[0] == column)


def hf_class_names(pf, column: str) -> list[str] | None:
    """Class names a Hugging Face ClassLabel column records in the file's metadata, if any."""
    raw = (pf.schema_arrow.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(raw)["info"]["features"][column]
        names = feature.get("names")
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def labels_to_indices(values: list, is_text: bool, class_names: Sequence[str] | None,
                      recorded: list[str] | None, what: str) -> tuple[np.ndarray, list[str]]:
    """Label values → (int64 indices, class names). Text labels name classes; integer labels are indices."""
    if any(v is None for v in values):
        raise UserError(f"{what}: label column has null values")
    if is_text:
        names = list(class_names) if class_names is not None else sorted(set(map(str, values)))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in values} - set(index))
        if unknown:
            raise UserError(f"{what}: label {unknown[0]!r} is not in class_names; valid: {', '.join(names)}")
        return np.array([index[str(v)] for v in values], dtype=np.int64), names
    labels = np.asarray(values, dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise UserError(f"{what}: label {labels.min()} is negative (unlabelled rows cannot be used)")
    top = int(labels.max()) if len(labels) else -1
    names = list(class_names) if class_names is not None else recorded or [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise UserError(f"{what}: label {top} but only {len(names)} class names")
    return labels, names


@dataclass
class ParquetImageDataset(Captioned, DecodedImageDataset):
    name: str
    split: str
    source: list[str]
    files: list[ParquetFileRef]
    row_groups: list[RowGroup]
    labels: np.ndarray
    ids: np.ndarray
    class_names: list[str]
    image_column: str
    image_size: int | None
    mode: str
    image_shape: tuple[int, int, int]
    captions: np.ndarray | None = None   # N × K caption strings ("" pads), read with the labels
    captions_column: str | None = None

    def __post_init__(self):
        self._starts = np.array([g.start for g in self.row_groups], dtype=np.int64)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._open: dict[int, Any] = {}  # file index -> ParquetFile, a few at a time
        self._cached: tuple[int, Any] | None = None  # (row group, its image column) kept for the next batch

    def __getstate__(self) -> dict[str, Any]:
        # Open files and cached columns stay behind; a worker reopens what it reads.
        return {k: v for k, v in self.__dict__.items() if k not in ("_open", "_cached")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def __len__(self) -> int:
        return len(self.labels)

    def _parquet(self, file: int):
        if file not in self._open:
            if len(self._open) >= MAX_OPEN_FILES:
                self._open.pop(next(iter(self._open)))
            self._open[file] = open_parquet(self.files[file])
        return self._open[file]

    def _whole_group(self, g: int):
        if self._cached is None or self._cached[0] != g:
            group = self.row_groups[g]
            table = self._parquet(group.file).read_row_group(group.index, columns=[self.image_column])
            self._cached = (g, table.column(0).combine_chunks())
        return self._cached[1]

    def _streamed_rows(self, g: int, rows: np.ndarray):
        """Rows of a big row group, reading it in small record batches and keeping only the rows asked for."""
        import pyarrow as pa

        group = self.row_groups[g]
        pf = self._parquet(group.file)
        pieces, order, offset = [], [], 0
        for batch in pf.iter_batches(batch_size=STREAM_ROWS, row_groups=[group.index], columns=[self.image_column]):
            hit = np.nonzero((rows >= offset) & (rows < offset + batch.num_rows))[0]
            if len(hit):
                pieces.append(batch.column(0).take(pa.array(rows[hit] - offset)))
                order.append(hit)
            offset += batch.num_rows
            if offset > rows.max():
                break
        taken = pa.concat_arrays(pieces)
        return taken.take(pa.array(np.argsort(np.concatenate(order))))

    def _image_bytes(self, g: int, rows: np.ndarray) -> list[bytes | None]:
        import pyarrow as pa

        if self.row_groups[g].image_bytes <= MAX_WHOLE_GROUP_BYTES:
            values = self._whole_group(g).take(pa.array(rows))
        else:
            values = self._streamed_rows(g, rows)
        if pa.types.is_struct(values.type):  # flatten(), unlike field(), keeps a null struct null
            values = values.flatten()[values.type.get_field_index("bytes")]
        return values.to_pylist()

    def _rows(self, indices, *, pixels: bool) -> dict[str, np.ndarray]:
        n = len(self)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        groups = np.searchsorted(self._starts, idx, side="right") - 1
        blobs: list[bytes | None] = [None] * len(idx)
        for g in np.unique(groups):  # one read per row group, in file order
            where = np.nonzero(groups == g)[0]
            for j, blob in zip(where, self._image_bytes(int(g), idx[where] - self._starts[g])):
                blobs[j] = blob
        ids = self.ids[idx]
        images = []
        for row_id, blob in zip(ids, blobs):
            if blob is None:
                raise UserError(f"row {row_id}: image column {self.image_column!r} is null or holds no bytes")
            images.append(decode_image(blob, self.image_size, self.mode, name=f"row {row_id}", pixels=pixels))
        out = {"id": ids, "image": stack_images(images, [f"row {i}" for i in ids], self.image_shape, pixels=pixels),
               "label": self.labels[idx]}
        return self.with_captions(out, idx)

    def describe(self) -> dict[str, Any]:
        # the caption column only when one is read: a dataset without captions keeps its store keys
        return {**super().describe(), "source": self.source, "files": [f.name for f in self.files],
                "image_column": self.image_column,
                **({"captions_column": self.captions_column} if self.captions_column else {})}


def load_parquet_images(split: str = "train", *, path: str | os.PathLike | Sequence[str | os.PathLike],
                        image_column: str = "image", label_column: str = "label", id_column: str | None = None,
                        image_size: int | None = None, class_names: Sequence[str] | None = None,
                        mode: str = "RGB", captions_column: str | None = None) -> ParquetImageDataset:
    """Encoded images with labels from Parquet; ``image_size`` None keeps the stored size (all images must match);
    ``captions_column``: the column of each row's caption(s) (a string or a list of strings), read as ``sentences``."""
    channels = channels_for(mode)
    size = as_hw(image_size)
    if isinstance(class_names, str):  # "cat,dog" from a command line
        class_names = [c.strip() for c in class_names.split(",")]
    sources = [os.fspath(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
    files = find_files(sources, split)
    wanted = [image_column, label_column] + ([id_column] if id_column else [])
    row_groups: list[RowGroup] = []
    label_values: list = []
    ids: list[str] = []
    label_types: set[str] = set()
    recorded: list[str] | None = None
    captions: list[list[str]] = []
    for f, ref in enumerate(files):
        pf = open_parquet(ref)
        check_columns(pf, ref, wanted)
        check_image_type(pf, ref, image_column)
        if captions_column:
            check_caption_column(pf, ref, captions_column)
        small = pf.read(columns=wanted[1:] + ([captions_column] if captions_column else []))  # never the images
        if captions_column:
            captions += column_captions(small.column(captions_column).to_pylist(),
                                        lambda r, name=ref.name: f"{name} row {r}: column {captions_column!r}")
        label_types.add(label_kind(small.schema.field(label_column).type, ref, label_column))
        recorded = recorded or hf_class_names(pf, label_column)
        label_values += small.column(label_column).to_pylist()
        ids += (list(map(str, small.column(id_column).to_pylist())) if id_column
                else [f"{ref.name}#{r}" for r in range(small.num_rows)])
        start = len(label_values) - small.num_rows
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if rows:  # an empty group would share its start with the next and confuse the row lookup
                row_groups.append(RowGroup(f, g, start, rows, column_bytes(pf, image_column, g)))
            start += rows
    where = ", ".join(sources)
    if not label_values:
        raise UserError(f"parquet {where} has no rows for split {split!r}")
    if len(label_types) > 1:
        raise UserError(f"parquet {where}: label column {label_column!r} is text in some files and integer in others")
    labels, names = labels_to_indices(label_values, label_types == {"text"}, class_names, recorded, where)
    dataset = ParquetImageDataset(
        name="parquet", split=split, source=sources, files=files, row_groups=row_groups, labels=labels,
        ids=np.array(ids, dtype=str), class_names=names, image_column=image_column, image_size=image_size, mode=mode,
        image_shape=(channels, *size) if size else (channels, 0, 0),
        captions=caption_array(captions) if captions_column else None, captions_column=captions_column or None)
    if size is None:  # keep the stored size: learn it from the first image
        dataset.image_shape = first_image_shape(dataset)
    return dataset


def check_caption_column(pf, ref: ParquetFileRef, column: str) -> None:
    """``captions_column`` is there and holds text (a string or a list of strings a row)."""
    names = pf.schema_arrow.names
    if column not in names:
        raise UserError(f"{ref.name}: captions_column {column!r} is not a column; columns present: {', '.join(names)}")
    kind = pf.schema_arrow.field(column).type
    if not is_caption_type(kind):
        raise UserError(f"{ref.name}: captions_column {column!r} has type {kind}; expected a string or a list of "
                        f"strings a row")


def label_kind(kind, ref: ParquetFileRef, column: str) -> str:
    """"text" (labels name classes) or "int" (labels are class indices); anything else is a UserError."""
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return "text"
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return "int"
    raise UserError(f"{ref.name}: label column {column!r} has type {kind}; expected integers or class-name strings")


def first_image_shape(dataset: ParquetImageDataset) -> tuple[int, int, int]:
    """The decoded shape of row 0, which every other image must then match."""
    blob = dataset._image_bytes(0, np.array([0]))[0]
    name = f"row {dataset.ids[0]}"
    if blob is None:
        raise UserError(f"{name}: image column {dataset.image_column!r} is null or holds no bytes")
    return tuple(decode_image(blob, None, dataset.mode, name=name).shape)
