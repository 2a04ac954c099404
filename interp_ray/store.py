"""The activation store: Parquet shards of activations, keyed by what produced them, written once, read back as tensors.

Layout (see docs/activation_store.md)::

    <root>/<model name>/<key>/
        _manifest.json          identity, layer shapes, row/shard counts, complete flag — written first, finished last
        part-000000.parquet     rows [0, S) of the split, sorted by row index
        part-000001.parquet     rows [S, 2S) …  (S = rows per part; the last part may be shorter)

S is fixed when the store is created: at most ``shard_rows`` rows and at most ``part_bytes`` bytes of rows as
extracted (``rows_per_part``), so the writer, which buffers one part per shard in flight, stays bounded in memory
whatever a row weighs.

``key`` = the first 16 hex digits of sha256 over the store's *identity*: the checkpoint's content digest, the resolved
layer list, how each layer is kept (dtype, channels, spatial reduction: ``storage``), the dataset's ``describe()``,
the data config (name + options), the split and the store format. Two runs that would produce the same numbers share
a key; anything that could change a number changes it, so a stale store can never be read as if it were fresh.

Each part holds exactly the fixed row range of its shard. It is written to a hidden temp file and renamed into place
only when complete, and never replaced once there, so a run killed at any moment leaves only whole parts behind; a
rerun lists them and computes only the missing shards. Every part carries the store key in its schema metadata, and
readers check it, so a part copied in from another store is refused.

Columns: ``index`` (int64, row of the split), ``id`` (string), ``label``, ``prediction`` (int64), ``probabilities``
and one column per layer, each an Arrow ``fixed_shape_tensor`` whose type carries the per-row shape — pyarrow,
Ray Data and this module's reader all hand back N×shape arrays without being told the shape. A layer's values are
float32, float16, or bfloat16 kept as its raw bits (``fixed_shape_tensor<uint16>``: Parquet has no bfloat16); the
manifest's ``layers`` (and the parts' metadata, and the column's field metadata) name the logical dtype, and the
reader widens both 16-bit kinds to float32 unless asked for the kept dtype. A store may also keep
*kept* columns: dataset columns the extraction copied through unchanged (``keep``), such as the reference ``sentences``
(N×K strings) or the scenes' ``attributes`` (N×4 int64), so that a learned explainer finds its ground truth in the
same rows as the activations and never goes back to the dataset (which would regenerate or decode every image).

This module is Ray-free except ``ActivationStore.to_ray``; writing happens through ``ShardAssembler``, which the Ray
Data writer stage and the plain single-process path both use.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Sequence

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


# --- manifest ----------------------------------------------------------------------------------------------------

@dataclass
class Manifest:
    """A store's identity and layout. Subclasses (``interp_ray.saliency_store.SaliencyManifest``) reuse every
    mechanism here — key check, atomic parts, resume — by overriding the class variables and ``build_table``."""

    FORMAT_ID: ClassVar[str] = FORMAT           # what ``format`` must say for this kind of store
    META_KEY: ClassVar[bytes] = SCHEMA_META_KEY  # the parts' schema-metadata key
    KIND: ClassVar[str] = "activation store"    # for messages ("an …")
    CONTENT: ClassVar[str] = "activations"      # for messages ("holds … for")

    key: str
    identity: dict[str, Any]
    model: dict[str, Any]                 # {"name": …, "checkpoint": path it was read from}
    # layer → {"shape": [per-row shape as stored], "dtype": "float32" | "float16" | "bfloat16"}, plus how it was kept
    # ("reduce", "pool_size", "channels", "source_shape") when not whole
    layers: dict[str, dict[str, Any]]
    class_names: list[str]
    rows: int
    shard_rows: int
    complete: bool = False
    format: str = FORMAT
    created: str = field(default_factory=utc_now)
    completed: str | None = None
    # kept dataset columns: name → {"dtype": "string" | "int64", "shape": [per-row shape]} (see the module doc)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    part_bytes: int | None = None         # the byte bound shard_rows was derived from (None: stores made before it)
    compression: str | None = None        # the parts' Parquet codec, kept for every part of the store

    @property
    def num_shards(self) -> int:
        return -(-self.rows // self.shard_rows) if self.rows else 0

    def shard_range(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} out of range 0..{self.num_shards - 1}")
        lo = shard * self.shard_rows
        return lo, min(lo + self.shard_rows, self.rows)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(spec["shape"]) for name, spec in self.layers.items()}

    def layer_dtypes(self) -> dict[str, str]:
        return {name: spec.get("dtype", "float32") for name, spec in self.layers.items()}

    def row_bytes(self) -> int:
        """Bytes one row takes in the writer's buffers: layers in their kept dtype, probabilities, four int64
        columns (index, shard, label, prediction), an id, kept columns (8 bytes an integer, 64 a string: an
        estimate, as the id's)."""
        total = 4 * 8 + 64 + 4 * len(self.class_names)
        for spec in self.layers.values():
            size = np.dtype(LAYER_DTYPES.get(spec.get("dtype", "float32"), np.float32)).itemsize
            total += size * int(np.prod(spec.get("shape", [1])))
        for spec in self.kept.values():
            total += (64 if spec["dtype"] == "string" else 8) * int(np.prod(spec["shape"]))
        return total

    def describe_key(self) -> str:
        ident = self.identity
        return (f"key {self.key} (checkpoint {str(ident.get('checkpoint_digest'))[:12]}, layers "
                f"{','.join(ident.get('layers', []))}, dataset {ident.get('dataset', {}).get('name')}, "
                f"split {ident.get('split')})")

    def column_names(self) -> list[str]:
        return [*BASE_COLUMNS, *self.layers, *self.kept]

    def build_table(self, shard: int, cols: dict[str, np.ndarray]):
        """One shard's sorted rows as an Arrow table with this store's schema and metadata."""
        return build_part_table(self, shard, cols)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> "Manifest":
        try:
            raw = json.loads(text)
            if raw.get("format") != cls.FORMAT_ID:
                raise UserError(f"{source}: format {raw.get('format')!r} is not {cls.FORMAT_ID!r}")
            return cls(**raw)
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise UserError(f"{source}: not a valid {cls.KIND} manifest ({e})") from None

    def check_integrity(self, source: str) -> None:
        """The recorded key must be the hash of the recorded identity: an edited manifest is refused."""
        if store_key(self.identity) != self.key:
            raise UserError(f"{source}: the manifest's key {self.key} does not match its recorded identity "
                            f"(edited or corrupt); refusing to use it")


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


def read_manifest(fs: Any, directory: str, cls: type[Manifest] = Manifest) -> Manifest | None:
    path = posixpath.join(directory, MANIFEST_FILE)
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    return cls.from_json(text, source=path)


def write_manifest(fs: Any, directory: str, manifest: Manifest) -> None:
    atomic_write_bytes(fs, posixpath.join(directory, MANIFEST_FILE), manifest.to_json().encode())


# --- Arrow conversion --------------------------------------------------------------------------------------------

def tensor_array(values: np.ndarray, dtype: Any = np.float32):
    """N×shape values → an Arrow ``fixed_shape_tensor`` array of ``dtype`` (the type carries the per-row shape)."""
    import pyarrow as pa

    arr = np.ascontiguousarray(values, dtype=dtype)
    if arr.ndim == 1:  # a per-row scalar still gets a shape, so readers never special-case it
        arr = arr[:, None]
    return pa.FixedShapeTensorArray.from_numpy_ndarray(arr)


def part_metadata(manifest: Manifest, shard: int) -> dict[str, Any]:
    lo, hi = manifest.shard_range(shard)
    ident = manifest.identity
    return {"format": FORMAT, "key": manifest.key, "shard": shard, "rows": [lo, hi],
            "checkpoint_digest": ident["checkpoint_digest"], "model": manifest.model, "layers": manifest.layers,
            "dataset": ident["dataset"], "split": ident["split"]}


def build_part_table(manifest: Manifest, shard: int, cols: dict[str, np.ndarray]):
    """One shard's rows (already sorted, exactly the shard's range) as an Arrow table with the store's schema."""
    import pyarrow as pa

    arrays = {
        "index": pa.array(np.asarray(cols["index"], dtype=np.int64)),
        "id": pa.array([str(x) for x in cols["id"]], type=pa.string()),
        "label": pa.array(np.asarray(cols["label"], dtype=np.int64)),
        "prediction": pa.array(np.asarray(cols["prediction"], dtype=np.int64)),
        "probabilities": tensor_array(cols["probabilities"]),
    }
    shapes, dtypes = manifest.layer_shapes(), manifest.layer_dtypes()
    for name, shape in shapes.items():
        values = np.asarray(cols[name])
        if tuple(values.shape[1:]) != shape:
            raise RuntimeError(f"layer {name}: rows have shape {values.shape[1:]}, the manifest says {shape}")
        arrays[name] = layer_array(name, values, dtypes[name])
    for name, spec in manifest.kept.items():
        arrays[name] = extra_array(name, cols[name], spec)
    table = pa.table(arrays)
    fields = [f.with_metadata({DTYPE_FIELD_KEY: dtypes[f.name].encode()}) if f.name in dtypes else f
              for f in table.schema]
    meta = {SCHEMA_META_KEY: json.dumps(part_metadata(manifest, shard), sort_keys=True).encode()}
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=meta))


def layer_array(name: str, values: np.ndarray, dtype: str):
    """A layer's rows as the Arrow tensor column of its logical ``dtype``: float32, float16, or bfloat16's raw bits
    (uint16). Float rows for a bfloat16 layer are rounded here; bits for a float layer are a bug, never cast."""
    if dtype not in LAYER_DTYPES:
        raise RuntimeError(f"layer {name}: unknown dtype {dtype!r}")
    if values.dtype == np.uint16 and dtype != "bfloat16":
        raise RuntimeError(f"layer {name}: bfloat16 bits given for a {dtype} layer")
    if dtype == "bfloat16" and values.dtype != np.uint16:
        values = bfloat16_bits(values)
    return tensor_array(values, LAYER_DTYPES[dtype])


def extra_spec(values: np.ndarray) -> dict[str, Any]:
    """The manifest entry of a kept column, from a batch of it: strings or integers, any fixed per-row shape."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        return {"dtype": "string", "shape": list(arr.shape[1:])}
    if arr.dtype.kind in "iub":
        return {"dtype": "int64", "shape": list(arr.shape[1:])}
    raise UserError(f"a kept column must hold strings or integers, got {arr.dtype}; keep activations as layers")


def pack_strings(values: np.ndarray) -> np.ndarray:
    """N×K… strings as N JSON strings, for transport through Ray Data: numpy's fixed-width str arrays become Arrow
    tensors whose width differs from batch to batch, which Ray Data cannot concatenate."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "US" or arr.ndim < 2:
        return arr
    return np.array([json.dumps(row.tolist()) for row in arr], dtype=object)


def unpack_strings(values: np.ndarray) -> np.ndarray:
    """The inverse of ``pack_strings``."""
    return np.array([json.loads(str(v)) for v in values], dtype=str)


def extra_array(name: str, values: np.ndarray, spec: dict[str, Any]):
    """A kept column as Arrow: a flat string/int64 array, nested in fixed-size lists for each per-row axis."""
    import pyarrow as pa

    shape = tuple(spec["shape"])
    arr = np.asarray(values)
    if spec["dtype"] == "string" and shape and arr.ndim == 1:
        arr = unpack_strings(arr)
    if tuple(arr.shape[1:]) != shape:
        raise RuntimeError(f"kept column {name}: rows have shape {arr.shape[1:]}, the manifest says {shape}")
    flat = arr.reshape(-1)
    out = (pa.array([str(x) for x in flat], type=pa.string()) if spec["dtype"] == "string"
           else pa.array(flat.astype(np.int64)))
    for size in reversed(shape):
        out = pa.FixedSizeListArray.from_arrays(out, int(size))
    return out


def _fixed_list_numpy(col) -> np.ndarray:
    """A (nested) fixed-size-list column back as an N×shape numpy array (strings as str)."""
    import pyarrow as pa

    shape, inner = [], col.type
    while pa.types.is_fixed_size_list(inner):
        shape.append(inner.list_size)
        inner = inner.value_type
    flat = col
    for _ in shape:
        flat = flat.flatten()
    values = (np.asarray(flat.to_pylist(), dtype=str) if pa.types.is_string(inner) or pa.types.is_large_string(inner)
              else flat.to_numpy(zero_copy_only=False))
    return values.reshape(len(col), *shape)


def batch_from_arrow(record_batch) -> dict[str, np.ndarray]:
    """An Arrow record batch of the store → dict of numpy arrays, tensor columns back in their N×shape form."""
    import pyarrow as pa

    out: dict[str, np.ndarray] = {}
    for name, col in zip(record_batch.schema.names, record_batch.columns):
        if isinstance(col.type, pa.FixedShapeTensorType):
            out[name] = col.to_numpy_ndarray()
        elif pa.types.is_fixed_size_list(col.type):
            out[name] = _fixed_list_numpy(col)
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.asarray(col.to_pylist(), dtype=str)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def read_part_metadata(fs: Any, path: str, meta_key: bytes = SCHEMA_META_KEY) -> tuple[dict[str, Any], int]:
    """(store metadata, row count) of a part, from its footer only."""
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
            raw = (md.metadata or {}).get(meta_key)
            if raw is None:
                raise UserError(f"{path} is not a store part of this kind (no {meta_key.decode()} metadata)")
            return json.loads(raw), md.num_rows
    except UserError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated or foreign files
        raise UserError(f"{path} cannot be read as a Parquet part ({e}); delete it to recompute that shard") from None


# --- preparing a store for writing -------------------------------------------------------------------------------

def prepare_store(location: str, manifest: Manifest) -> tuple[Manifest, list[int]]:
    """Create or reopen the store at ``location`` for ``manifest``; return (manifest in force, shards still missing).

    A directory that holds another key, or anything that is not a store, is a ``UserError`` and nothing in it is
    touched. An existing store of the same key keeps its own ``shard_rows`` (its parts were cut that way).
    """
    fs, directory = resolve_location(location)
    existing = check_store(location, manifest)
    names = list_names(fs, directory)
    if existing is None:
        fs.create_dir(directory, recursive=True)
        write_manifest(fs, directory, manifest)
        return manifest, list(range(manifest.num_shards))
    if existing.shard_rows != manifest.shard_rows:
        log.warning("store %s was started with %d rows a part; keeping that (asked for %d)", location,
                    existing.shard_rows, manifest.shard_rows)
    if manifest.compression and existing.compression and existing.compression != manifest.compression:
        log.warning("store %s was started with compression=%s; keeping that (asked for %s)", location,
                    existing.compression, manifest.compression)
    done = check_parts(fs, directory, existing)
    _remove_stale_temps(fs, directory, names)
    missing = [s for s in range(existing.num_shards) if s not in done]
    if missing and existing.complete:  # a part was deleted by hand: the store is incomplete again
        existing.complete, existing.completed = False, None
        write_manifest(fs, directory, existing)
    return existing, missing


def check_store(location: str, manifest: Manifest) -> Manifest | None:
    """Read-only: the manifest of the store already at ``location`` (None if there is none yet). Anything there that
    is not a store of ``manifest``'s key is a ``UserError``."""
    fs, directory = resolve_location(location)
    existing = read_manifest(fs, directory, type(manifest))
    if existing is None:
        if list_names(fs, directory) or (_exists(fs, directory) and not _is_dir(fs, directory)):
            raise UserError(f"{location} exists and is not an {manifest.KIND} (no {MANIFEST_FILE}); "
                            f"choose another output path — nothing was touched")
        return None
    existing.check_integrity(posixpath.join(directory, MANIFEST_FILE))
    if existing.key != manifest.key:
        raise StoreKeyMismatch(f"{location} holds {manifest.CONTENT} for {existing.describe_key()}, not for "
                               f"{manifest.describe_key()}; choose another output path — nothing was touched")
    return existing


def check_parts(fs: Any, directory: str, manifest: Manifest) -> set[int]:
    """The shards whose parts are present and whole; a part of another store or of the wrong size is a UserError."""
    done = set()
    for shard, path in part_files(fs, directory).items():
        if shard >= manifest.num_shards:
            raise UserError(f"{path}: shard {shard} is beyond this store's {manifest.num_shards} shards")
        meta, num_rows = read_part_metadata(fs, path, manifest.META_KEY)
        lo, hi = manifest.shard_range(shard)
        if meta.get("key") != manifest.key:
            raise UserError(f"{path} belongs to store {meta.get('key')}, not {manifest.key}; refusing to mix them")
        if num_rows != hi - lo or meta.get("rows") != [lo, hi]:
            raise UserError(f"{path} holds {num_rows} rows, expected rows [{lo}, {hi}); delete it to recompute")
        done.add(shard)
    return done


def _remove_stale_temps(fs: Any, directory: str, names: Iterable[str]) -> None:
    """Temp files are left by killed runs; they are never read, only cleaned (one writer per store at a time)."""
    for name in names:
        if name.startswith(".") and TMP_MARK in name:
            try:
                fs.delete_file(posixpath.join(directory, name))
            except OSError:  # another process removed it first
                pass


def finalize_store(location: str, manifest: Manifest) -> Manifest:
    """Mark the store complete once every shard's part is present and whole; raise if any is missing."""
    fs, directory = resolve_location(location)
    done = check_parts(fs, directory, manifest)
    missing = sorted(set(range(manifest.num_shards)) - done)
    if missing:
        raise RuntimeError(f"store {location} is missing {len(missing)} of {manifest.num_shards} shards "
                           f"(first: {missing[0]}); run the job again to finish it")
    if not manifest.complete:
        manifest.complete, manifest.completed = True, utc_now()
        write_manifest(fs, directory, manifest)
    return manifest


# --- writing -----------------------------------------------------------------------------------------------------

@dataclass
class _Pending:
    lo: int
    seen: np.ndarray  # bool per row of the shard
    # The shard's columns, allocated whole at its first rows and filled in place as rows arrive: a part costs its own
    # size once (no list of chunks, then a concatenated copy, then a sorted copy), and comes out in row order.
    cols: dict[str, np.ndarray] | None = None


def _empty_rows(values: np.ndarray, n: int) -> np.ndarray:
    """Room for ``n`` rows like ``values``' (strings as objects: numpy's fixed width differs from batch to batch)."""
    dtype = object if values.dtype.kind in "USO" else values.dtype
    return np.empty((n, *values.shape[1:]), dtype=dtype)


def drill(written: int, fail_after_shards: int | None, fail_mode: str) -> None:
    """The resumability drill of a writer that has written ``written`` parts: once ``fail_after_shards`` are
    written, raise ``InjectedFailure`` (``fail_mode="raise"``) or stand still forever (``"hang"``, so a test can
    kill -9 the job at a known point)."""
    if fail_after_shards is None or written < fail_after_shards:
        return
    if fail_mode == "hang":
        log.warning("drill: writer stops after %d shard(s) and waits to be killed", written)
        while True:
            time.sleep(3600)
    raise InjectedFailure(f"injected failure after writing {written} shard(s)")


class ShardAssembler:
    """Collects extractor output rows by shard and writes each shard's part once all its rows have arrived.

    Rows may come in any order and any grouping (Ray Data does not preserve order across actors); a row seen twice
    (a retried task) is dropped, since extraction is deterministic. Each open shard holds one part's rows (its
    columns, filled in place), so the memory is the parts in flight times the part size (``rows_per_part``). ``fail_after_shards`` raises (``fail_mode="raise"``)
    or stops forever (``"hang"``, to be killed) after that many parts were written by this assembler — a drill.
    """

    def __init__(self, location: str, manifest: Manifest | dict[str, Any], *, compression: str = "zstd",
                 fail_after_shards: int | None = None, fail_mode: str = "raise"):
        self.location = str(location)
        self.fs, self.directory = resolve_location(self.location)
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest(**manifest)
        self.compression = self.manifest.compression or compression  # a store keeps the codec it was started with
        self.fail_after_shards, self.fail_mode = fail_after_shards, fail_mode
        self.written = 0
        self.pending: dict[int, _Pending] = {}

    def add(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Take a batch (needs ``index`` and ``shard`` columns); return one record per part written."""
        shards = np.asarray(batch["shard"], dtype=np.int64)
        done = []
        for shard in np.unique(shards):
            rows = {k: np.asarray(v)[shards == shard] for k, v in batch.items()}
            record = self._add_rows(int(shard), rows)
            if record is not None:
                done.append(record)
        return done

    def _add_rows(self, shard: int, rows: dict[str, np.ndarray]) -> dict[str, Any] | None:
        lo, hi = self.manifest.shard_range(shard)
        pend = self.pending.setdefault(shard, _Pending(lo, np.zeros(hi - lo, dtype=bool)))
        offsets = np.asarray(rows["index"], dtype=np.int64) - lo
        if offsets.size and (offsets.min() < 0 or offsets.max() >= hi - lo):
            raise RuntimeError(f"rows {offsets.min() + lo}..{offsets.max() + lo} are not in shard {shard} [{lo}, {hi})")
        _, first = np.unique(offsets, return_index=True)
        keep = np.zeros(len(offsets), dtype=bool)
        keep[first] = True
        keep &= ~pend.seen[offsets]
        if keep.any():
            if pend.cols is None:
                pend.cols = {k: _empty_rows(np.asarray(v), hi - lo) for k, v in rows.items()}
            for k, v in rows.items():
                pend.cols[k][offsets[keep]] = np.asarray(v)[keep]
            pend.seen[offsets[keep]] = True
        if not pend.seen.all():
            return None
        del pend
        return self._write(shard, self.pending.pop(shard).cols)

    def _write(self, shard: int, cols: dict[str, np.ndarray]) -> dict[str, Any]:
        import pyarrow as pa

        table = self.manifest.build_table(shard, cols)
        del cols  # the Arrow table shares the tensors' memory; the rest (ids) can go before encoding
        row = max(1, table.nbytes // max(1, table.num_rows))
        table = pa.Table.from_batches(table.to_batches(max_chunksize=max(1, WRITE_CHUNK_BYTES // row)),
                                      schema=table.schema)
        group = max(1, ROW_GROUP_BYTES // row)
        nbytes = write_part(self.fs, self.directory, shard, table, compression=self.compression,
                            row_group_rows=group)
        self.written += 1
        drill(self.written, self.fail_after_shards, self.fail_mode)
        return {"shard": shard, "rows": table.num_rows, "bytes": nbytes or 0, "skipped": nbytes is None}

    def pending_rows(self) -> int:
        return int(sum(p.seen.sum() for p in self.pending.values()))


def write_part(fs: Any, directory: str, shard: int, table, *, compression: str = "zstd",
               row_group_rows: int | None = None) -> int | None:
    """Write a part atomically (temp file, then rename); never replace an existing one. Returns bytes, or None if the
    part already existed (another run finished it first). ``row_group_rows``: rows per row group (``ROW_GROUP_BYTES``:
    why); None, Parquet's default."""
    import pyarrow.parquet as pq

    final = posixpath.join(directory, part_name(shard))
    if _exists(fs, final):
        return None
    tmp = _tmp_path(final)
    with fs.open_output_stream(tmp) as out:
        # Dictionaries and min/max statistics only where they help (small-cardinality ints, the row index): on float
        # tensors they are useless and cost ~40% of the encoding CPU.
        pq.write_table(table, out, compression=compression, use_dictionary=["label", "prediction"],
                       write_statistics=["index", "label", "prediction"], row_group_size=row_group_rows)
    size = _info(fs, tmp).size
    if _exists(fs, final):
        fs.delete_file(tmp)
        return None
    fs.move(tmp, final)
    return int(size or 0)


# --- reading -----------------------------------------------------------------------------------------------------

class ActivationStore:
    """A finished store, opened read-only. Batches come back as dicts of numpy arrays (or torch tensors) with every
    layer in its own shape; ``to_ray()`` gives a ``ray.data.Dataset`` for Ray Train's ``get_dataset_shard``."""

    MANIFEST: ClassVar[type[Manifest]] = Manifest  # the kind of store this reader opens

    def __init__(self, location: str, manifest: Manifest, fs: Any, directory: str):
        self.location, self.manifest, self.fs, self.directory = str(location), manifest, fs, directory

    @classmethod
    def open(cls, location: str, *, key: str | None = None, require_complete: bool = True) -> "ActivationStore":
        """Open the store at ``location``. ``key``: the key the caller expects (see ``expected_key``); a store of
        any other key is refused, never read."""
        fs, directory = resolve_location(str(location))
        manifest = read_manifest(fs, directory, cls.MANIFEST)
        kind = cls.MANIFEST.KIND
        if manifest is None:
            raise UserError(f"no {kind} at {location} (no {MANIFEST_FILE})")
        manifest.check_integrity(posixpath.join(directory, MANIFEST_FILE))
        if key is not None and manifest.key != key:
            raise StoreKeyMismatch(f"{location} holds {cls.MANIFEST.CONTENT} for {manifest.describe_key()}, "
                                   f"not for key {key}")
        if require_complete and not manifest.complete:
            raise UserError(f"{kind} {location} is incomplete (its job was interrupted); "
                            f"run the job again to finish it")
        return cls(str(location), manifest, fs, directory)

    # what is in it
    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        return self.manifest.layer_shapes()

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    def __len__(self) -> int:
        return self.manifest.rows

    @property
    def columns(self) -> list[str]:
        return self.manifest.column_names()

    def part_paths(self) -> list[str]:
        parts = part_files(self.fs, self.directory)
        missing = [s for s in range(self.manifest.num_shards) if s not in parts]
        if missing:
            raise UserError(f"{self.manifest.KIND} {self.location} lacks part {part_name(missing[0])} "
                            f"({len(missing)} missing); run its job again")
        return [parts[s] for s in range(self.manifest.num_shards)]

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        cols = list(self.columns if columns is None else columns)
        unknown = [c for c in cols if c not in self.columns]
        if unknown:
            raise UserError(f"unknown column(s) {', '.join(unknown)} in store {self.key}; "
                            f"valid: {', '.join(self.columns)}")
        return cols

    def iter_batches(self, batch_size: int = 1024, *, columns: Sequence[str] | None = None,
                     format: str = "numpy", drop_last: bool = False, dtype: str = "float32"
                     ) -> Iterator[dict[str, Any]]:
        """Batches of exactly ``batch_size`` rows (the last may be shorter), in row order, one row group of one part
        in memory at a time. ``format="torch"`` gives tensors for numeric columns (ids stay a numpy str array).
        ``dtype``: ``"float32"`` widens float16/bfloat16 layers (exactly) for consumers that train on them;
        ``"stored"`` gives the kept dtype (bfloat16: ``torch.bfloat16`` tensors, or its raw bits as uint16 in numpy,
        which has no bfloat16 — ``bfloat16_to_float32`` widens them)."""
        import pyarrow.parquet as pq

        if format not in ("numpy", "torch"):
            raise UserError(f"format must be 'numpy' or 'torch', got {format!r}")
        if dtype not in ("float32", "stored"):
            raise UserError(f"dtype must be 'float32' or 'stored', got {dtype!r}")
        cols = self._columns(columns)
        narrow = self._narrow(cols)
        bf16 = [k for k, v in narrow.items() if v == "bfloat16"] if dtype == "stored" else []

        def out(batch: dict[str, np.ndarray]) -> dict[str, Any]:
            if dtype == "float32":
                batch = {k: widen(v, narrow[k]) if k in narrow else v for k, v in batch.items()}
            return _to_format(batch, format, bf16)

        buffer = _Rebatcher(batch_size)
        for path in self.part_paths():
            with self.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                self._check_part(path, pf)
                for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                    for batch in buffer.push(batch_from_arrow(rb)):
                        yield out(batch)
        tail = buffer.flush()
        if tail is not None and not drop_last:
            yield out(tail)

    def read(self, *, columns: Sequence[str] | None = None, format: str = "numpy",
             dtype: str = "float32") -> dict[str, Any]:
        """Every row at once (small stores and tests); ``dtype`` as for ``iter_batches``."""
        batches = list(self.iter_batches(max(1, len(self)), columns=columns, format=format, dtype=dtype))
        return batches[0] if batches else {}

    def _narrow(self, columns: Sequence[str]) -> dict[str, str]:
        """The 16-bit layers among ``columns``, with their logical dtype (what reading widens to float32)."""
        return {k: v for k, v in self.manifest.layer_dtypes().items() if k in columns and v in NARROW_DTYPES}

    def _check_part(self, path: str, pf) -> None:
        raw = (pf.schema_arrow.metadata or {}).get(self.manifest.META_KEY)
        meta = json.loads(raw) if raw else {}
        if meta.get("key") != self.key:
            raise StoreKeyMismatch(f"{path} belongs to store {meta.get('key')}, not {self.key}; refusing to read it")

    def to_ray(self, *, columns: Sequence[str] | None = None, max_block_mib: float = STREAM_BLOCK_MIB,
               dtype: str = "float32", **read_parquet_kwargs):
        """The store as a ``ray.data.Dataset`` (layer columns as N×shape tensors), e.g. for ``ray.train`` datasets,
        read in blocks of at most about ``max_block_mib`` (``STREAM_BLOCK_MIB``: why) by Ray Data's V1 Parquet
        datasource (``PARQUET_DATASOURCE_V2``: why). ``dtype="float32"`` widens float16/bfloat16 layers in a
        ``map_batches`` after the read (only when the selection has any); ``"stored"`` leaves them as kept
        (bfloat16 as its uint16 bits)."""
        import ray.data

        if dtype not in ("float32", "stored"):
            raise UserError(f"dtype must be 'float32' or 'stored', got {dtype!r}")
        cols = self._columns(columns)
        narrow = self._narrow(cols)

        for path in self.part_paths():  # refuse foreign parts before Ray reads anything
            meta, _ = read_part_metadata(self.fs, path, self.manifest.META_KEY)
            if meta.get("key") != self.key:
                raise StoreKeyMismatch(f"{path} belongs to store {meta.get('key')}, not {self.key}")
        # A Dataset keeps the DataContext it is made in: the block bound holds wherever it is executed (Ray Train
        # workers included).
        with data_context(target_max_block_size=int(max_block_mib * 2**20),
                          use_datasource_v2=PARQUET_DATASOURCE_V2):
            # select_columns (not read_parquet's deprecated columns=): Ray Data pushes the projection into the read.
            ds = ray.data.read_parquet(self.part_paths(), filesystem=self.fs,
                                       **read_parquet_kwargs).select_columns(cols)
            if dtype == "float32" and narrow:
                ds = ds.map_batches(widen_layers, fn_args=(narrow,), batch_size=None, batch_format="numpy",
                                    zero_copy_batch=True)
            return ds

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"location": self.location, "key": m.key, "rows": m.rows, "shards": m.num_shards,
                "layers": {k: list(v) for k, v in self.layers.items()}, "dtypes": m.layer_dtypes(), "model": m.model,
                "dataset": m.identity["dataset"], "split": m.identity["split"], "complete": m.complete}


def widen_layers(batch: dict[str, np.ndarray], narrow: dict[str, str]) -> dict[str, np.ndarray]:
    """Ray Data's ``map_batches`` function of ``to_ray``: the ``narrow`` layers (name → logical dtype) as float32."""
    return {k: widen(v, narrow[k]) if k in narrow else v for k, v in batch.items()}


def shuffled(batches: Iterable[dict[str, np.ndarray]], buffer: int, seed: int, batch_rows: int
             ) -> Iterator[dict[str, np.ndarray]]:
    """A local shuffle buffer for the in-process path (what Ray Data's ``local_shuffle_buffer_size`` is for a
    worker): rows are drawn at random from a window of ``buffer`` rows as the store streams by."""
    if buffer <= 0:
        yield from batches
        return
    rng = np.random.default_rng(seed)
    pool: dict[str, np.ndarray] | None = None

    def size(p: dict[str, np.ndarray]) -> int:
        return len(next(iter(p.values())))

    for b in batches:
        pool = dict(b) if pool is None else {k: np.concatenate([pool[k], b[k]]) for k in pool}
        while size(pool) >= buffer + batch_rows:
            perm = rng.permutation(size(pool))
            pool = {k: v[perm] for k, v in pool.items()}
            yield {k: v[:batch_rows] for k, v in pool.items()}
            pool = {k: v[batch_rows:] for k, v in pool.items()}
    if pool is not None and size(pool):
        perm = rng.permutation(size(pool))
        for lo in range(0, len(perm), batch_rows):
            yield {k: v[perm[lo:lo + batch_rows]] for k, v in pool.items()}


@contextlib.contextmanager
def data_context(**settings: Any) -> Iterator[None]:
    """Ray Data's current DataContext with ``settings`` while the block runs, restored after it: what a Dataset made
    inside keeps (it copies the context it is made in), the caller's own settings left as they were."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = {name: getattr(ctx, name) for name in settings}
    for name, value in settings.items():
        setattr(ctx, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(ctx, name, value)


def store_location(root: str, model_name: str, key: str) -> str:
    """``<root>/<model name>/<key>`` (a URI root stays a URI, its query last)."""
    from interp_ray.storage import is_remote, join

    if is_remote(root):
        return join(root, model_name, key)
    return posixpath.join(str(root).rstrip("/"), model_name, key)


def expected_key(checkpoint: str, *, layers: Iterable[str] | str | None = None, data: dict[str, Any] | Any,
                 split: str, keep: Sequence[str] = (), storage: Any = None) -> tuple[str, str]:
    """(key, model name) that an extraction of ``checkpoint``/``layers`` over ``data``/``split`` would produce.

    ``data`` is a ``DataConfig`` or its dict (``{"name": …, "options": {…}}``); ``storage`` the extraction's
    ``StoreSection`` (or its dict), whose ``dtype`` and ``layers`` say how each layer is kept."""
    from interp_ray.checkpoint import load_classifier
    from interp_ray.config import StoreSection
    from interp_ray.data import load_dataset

    spec = data.model_dump() if hasattr(data, "model_dump") else dict(data)
    loaded = load_classifier(checkpoint)
    resolved = loaded.model.resolve_layers(loaded.model.default_layers if layers is None else layers)
    dataset = load_dataset(spec["name"], split, **spec.get("options", {}))
    kept_as = StoreSection.model_validate(storage or {}).layer_specs(resolved)
    ident = make_identity(checkpoint_digest=loaded.digest, layers=resolved, dataset=dataset.describe(),
                          split=split, data=spec, keep=keep, storage=kept_as)
    return store_key(ident), loaded.config["model"]["name"]


def find_store(root: str, checkpoint: str, *, data: dict[str, Any] | Any, split: str,
               layers: Iterable[str] | str | None = None, keep: Sequence[str] = (),
               storage: Any = None) -> ActivationStore:
    """Open the store that extracting ``checkpoint``/``layers`` (keeping ``keep``, each layer as ``storage`` says)
    over ``data``/``split`` under ``root`` produced."""
    key, model_name = expected_key(checkpoint, layers=layers, data=data, split=split, keep=keep, storage=storage)
    location = store_location(root, model_name, key)
    return ActivationStore.open(location, key=key)


class _Rebatcher:
    """Regroups a stream of column dicts into batches of exactly ``size`` rows."""

    def __init__(self, size: int):
        if size <= 0:
            raise UserError(f"batch_size must be positive, got {size}")
        self.size, self.parts, self.rows = size, [], 0

    def push(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        n = len(next(iter(batch.values()))) if batch else 0
        if n:
            self.parts.append(batch)
            self.rows += n
        while self.rows >= self.size:
            merged = self._merge()
            yield {k: v[: self.size] for k, v in merged.items()}
            rest = {k: v[self.size:] for k, v in merged.items()}
            self.rows -= self.size
            self.parts = [rest] if self.rows else []

    def flush(self) -> dict[str, np.ndarray] | None:
        if not self.rows:
            return None
        merged = self._merge()
        self.parts, self.rows = [], 0
        return merged

    def _merge(self) -> dict[str, np.ndarray]:
        if len(self.parts) == 1:
            return self.parts[0]
        return {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}


def _to_format(batch: dict[str, np.ndarray], format: str, bf16: Sequence[str] = ()) -> dict[str, Any]:
    """``bf16``: columns holding bfloat16 bits, which become ``torch.bfloat16`` tensors."""
    if format == "numpy":
        return batch
    import torch

    # Arrow-backed arrays are read-only; torch wants memory it may write, so numeric columns are copied once.
    out = {k: (torch.from_numpy(np.array(v)) if v.dtype.kind in "fiub" else v) for k, v in batch.items()}
    for k in bf16:  # the same 16 bits: numpy has no bfloat16, torch does
        out[k] = torch.from_numpy(np.array(batch[k]).view(np.int16)).view(torch.bfloat16)
    return out
