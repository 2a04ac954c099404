"""The store's layout: format constants, identity and key, the manifest, and the filesystem helpers."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import posixpath
import re
import uuid
from typing import Any, Sequence

import numpy as np

from interp_ray.jsonsafe import json_round_trip
from interp_ray.errors import UserError

log = logging.getLogger("interp_ray.store")

FORMAT = "interp-ray-activations/1"
MANIFEST_FILE = "_manifest.json"
SCHEMA_META_KEY = b"interp_ray.activations"
PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
TMP_MARK = ".tmp-"
KEY_HEX = 16
DEFAULT_SHARD_ROWS = 2048
DEFAULT_PART_BYTES = 128 * 2**20
# Row groups inside a part: a reader (this module's, or a Ray Data read task) decodes one at a time, so it holds at
# most about this much of a part, however big the part is.
ROW_GROUP_BYTES = 32 * 2**20
# Parquet's encoder works on one Arrow chunk at a time and builds the nested levels of a whole chunk (two int16 per
# value of a tensor column) besides its pages: a 64 MiB part written as one chunk grew the writer by 131 MiB, in
# chunks of 1 MiB by 11 MiB (pq.write_table of a 64×1024×16×16 float32 tensor column, VmHWM growth). Parts are
# handed to it in slices of about this much (zero-copy).
WRITE_CHUNK_BYTES = 2**20
# The numpy dtype a layer's values travel and are stored in, by logical dtype (bfloat16: its raw bits).
LAYER_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
NARROW_DTYPES = ("float16", "bfloat16")  # what readers widen to float32 unless asked for the kept dtype
DTYPE_FIELD_KEY = b"interp_ray.dtype"  # a layer field's metadata: its logical dtype
BASE_COLUMNS = ("index", "id", "label", "prediction", "probabilities")
# A loader's column: why a row's input could not be read (a corrupt image file), "" for a row that was. The writer
# keeps such a row out of its part and records it in the part's metadata (``skipped``), so the part still accounts
# for every row of its shard — resume and the exactly-once check stay what they were — and the manifest lists them.
UNREADABLE = "unreadable"
# Ray Data's blocks of a store read: about a part each. With Ray's default bound (128 MiB) a 160k-row store was read
# as one 128 MiB block, and a consumer's private memory grew by about that block's size over a pass (measured with
# benchmarks/stream_memory.py: +138 MiB at 160k rows against +20 MiB at 10k; with 2 MiB blocks +22 and +17).
STREAM_BLOCK_MIB = 2.0
# Ray Data 2.60 reads Parquet through its DataSourceV2 path (ListFiles → ReadFiles) by default. Each pass over a store
# (each epoch of a Ray Train worker) started with a delay growing with the number of parts: 2.5 s to the first batch at
# 10k rows (5 parts), 7.8 s at 160k (79 parts), against 0.2 and 0.3 s through the V1 datasource, which also streamed
# as fast (benchmarks/train_from_store.py --datasource v1|v2, side by side: BENCHMARKS.md). Stores are read by V1.
PARQUET_DATASOURCE_V2 = False


class StoreKeyMismatch(UserError):
    """A store exists where asked, but for other inputs (checkpoint, layers, dataset or split)."""


class InjectedFailure(RuntimeError):
    """Raised by ``fail_after_shards`` to drill resumability (tests, drills)."""


def part_name(shard: int) -> str:
    return f"part-{shard:06d}.parquet"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- identity and key --------------------------------------------------------------------------------------------

def make_identity(*, checkpoint_digest: str, layers: Sequence[str], dataset: dict[str, Any], split: str,
                  data: dict[str, Any] | None = None, keep: Sequence[str] = (),
                  storage: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the store key hashes. ``data`` (the data config: name + options) is included because not every
    ``describe()`` names every option that changes the pixels (digits' split seed, for one). ``keep`` (the kept
    dataset columns) enters only when there are some, and ``storage`` (layer → ``LayerStore`` or its dict) only for
    layers not kept whole in float32, so stores without them keep the keys they always had."""
    if data is not None:  # only what selects the rows: a config model may grow unrelated fields
        data = {"name": data["name"], "options": dict(data.get("options") or {})}
    ident = {"format": FORMAT, "checkpoint_digest": checkpoint_digest, "layers": list(layers),
             "dataset": dataset, "split": split, "data": data}
    if keep:
        ident["keep"] = sorted(keep)
    kept_as = storage_identity(storage or {})
    if kept_as:
        ident["storage"] = kept_as
    return json_round_trip(ident)


def storage_identity(storage: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The layers kept otherwise than whole in float32, each with every field of its spec (so a default that changes
    one day cannot silently alias two stores)."""
    from interp_ray.config import LayerStore

    out = {}
    for name, spec in storage.items():
        spec = LayerStore.model_validate(spec)
        if (spec.dtype or "float32") != "float32" or spec.reduce != "none" or spec.channels is not None:
            out[name] = {**spec.model_dump(), "dtype": spec.dtype or "float32"}
    return out


def rows_per_part(row_bytes: int, part_bytes: int, shard_rows: int = DEFAULT_SHARD_ROWS) -> int:
    """Rows of a part: at most ``shard_rows``, at most ``part_bytes`` of rows of ``row_bytes``, at least one."""
    return max(1, min(int(shard_rows), int(part_bytes) // max(1, int(row_bytes))))


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 as its raw 16 bits (uint16), rounded to nearest even as torch's cast rounds; NaN stays NaN."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    bits[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)  # a quiet NaN, whatever its payload's low bits were
    return bits


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 raw bits (uint16) → float32, exactly (bfloat16 is float32's upper half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def widen(values: np.ndarray, dtype: str) -> np.ndarray:
    """A layer column of logical ``dtype`` as float32 (exact for float16 and bfloat16)."""
    if dtype == "bfloat16":
        return bfloat16_to_float32(values)
    return np.asarray(values, dtype=np.float32)


def store_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(json_round_trip(identity), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_HEX]


# --- filesystem helpers ------------------------------------------------------------------------------------------

def resolve_location(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, file://)."""
    from interp_ray.data.parquet import resolve_filesystem

    return resolve_filesystem(str(location))


def _info(fs: Any, path: str):
    return fs.get_file_info(path)


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return _info(fs, path).type != pafs.FileType.NotFound


def _is_dir(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return _info(fs, path).type == pafs.FileType.Directory


def list_names(fs: Any, directory: str) -> list[str]:
    """Base names directly inside ``directory`` (empty if it does not exist)."""
    import pyarrow.fs as pafs

    if not _is_dir(fs, directory):
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos)


def part_files(fs: Any, directory: str) -> dict[int, str]:
    """shard → path of every finished part in ``directory``."""
    out = {}
    for name in list_names(fs, directory):
        m = PART_RE.match(name)
        if m:
            out[int(m.group(1))] = posixpath.join(directory, name)
    return out


def atomic_write_bytes(fs: Any, path: str, data: bytes) -> None:
    """Write beside ``path`` and rename over it, so a reader sees the old file or the new one, never half of one."""
    tmp = _tmp_path(path)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def _tmp_path(path: str) -> str:
    d, base = posixpath.split(path)
    return posixpath.join(d, f".{base}{TMP_MARK}{uuid.uuid4().hex[:12]}")
