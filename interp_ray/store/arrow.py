"""Arrow conversion: a part's table from numpy columns (tensor, 16-bit and kept columns) and back."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from interp_ray.errors import UserError
from interp_ray.store.layout import bfloat16_bits, DTYPE_FIELD_KEY, FORMAT, LAYER_DTYPES, SCHEMA_META_KEY

log = logging.getLogger("interp_ray.store")

# --- Arrow conversion --------------------------------------------------------------------------------------------

def tensor_array(values: np.ndarray, dtype: Any = np.float32):
    """N×shape values → an Arrow ``fixed_shape_tensor`` array of ``dtype`` (the type carries the per-row shape)."""
    import pyarrow as pa

    arr = np.ascontiguousarray(values, dtype=dtype)
    if arr.ndim == 1:  # a per-row scalar still gets a shape, so readers never special-case it
        arr = arr[:, None]
    if not len(arr):  # a part whose every row was unreadable: pyarrow's constructor refuses an empty array
        kind = pa.fixed_shape_tensor(pa.from_numpy_dtype(arr.dtype), arr.shape[1:])
        return pa.ExtensionArray.from_storage(kind, pa.array([], kind.storage_type))
    return pa.FixedShapeTensorArray.from_numpy_ndarray(arr)


def part_metadata(manifest: Any, shard: int) -> dict[str, Any]:
    lo, hi = manifest.shard_range(shard)
    ident = manifest.identity
    return {"format": FORMAT, "key": manifest.key, "shard": shard, "rows": [lo, hi],
            "checkpoint_digest": ident["checkpoint_digest"], "model": manifest.model, "layers": manifest.layers,
            "dataset": ident["dataset"], "split": ident["split"]}


def build_part_table(manifest: Any, shard: int, cols: dict[str, np.ndarray]):
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
    meta = {SCHEMA_META_KEY: json.dumps(part_metadata(manifest, shard), sort_keys=True).encode()}
    return tag_layer_fields(pa.table(arrays), dtypes, meta)


def tag_layer_fields(table, dtypes: dict[str, str], metadata: dict[bytes, bytes] | None = None):
    """``table`` with each layer's field tagged with its logical dtype (``DTYPE_FIELD_KEY``: the writer chooses
    encodings by it, readers widen bfloat16's bits by it) and ``metadata`` as the schema's."""
    import pyarrow as pa

    fields = [f.with_metadata({DTYPE_FIELD_KEY: dtypes[f.name].encode()}) if f.name in dtypes else f
              for f in table.schema]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=metadata))


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
