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

This package is Ray-free except ``ActivationStore.to_ray``; writing happens through ``ShardAssembler``, which the Ray
Data writer stage and the plain single-process path both use. Modules, each importing only those before it:
``layout`` (format constants, identity and key, filesystem helpers), ``arrow`` (tables from columns and back),
``manifest``, ``writer`` (prepare, assemble, finish) and ``reader`` (``ActivationStore``, ``find_store``).
"""

from __future__ import annotations

from interp_ray.store.layout import (atomic_write_bytes, BASE_COLUMNS, bfloat16_bits, bfloat16_to_float32,
                                     DEFAULT_PART_BYTES, DEFAULT_SHARD_ROWS, DTYPE_FIELD_KEY, FORMAT, InjectedFailure,
                                     KEY_HEX, LAYER_DTYPES, list_names, make_identity, MANIFEST_FILE, NARROW_DTYPES,
                                     PARQUET_DATASOURCE_V2, part_files, part_name, PART_RE, resolve_location,
                                     ROW_GROUP_BYTES, rows_per_part, SCHEMA_META_KEY, storage_identity, store_key,
                                     StoreKeyMismatch, STREAM_BLOCK_MIB, TMP_MARK, UNREADABLE, utc_now, widen,
                                     WRITE_CHUNK_BYTES)
from interp_ray.store.arrow import (batch_from_arrow, build_part_table, extra_array, extra_spec, layer_array,
                                    pack_strings, part_metadata, read_part_metadata, tensor_array, unpack_strings)
from interp_ray.store.manifest import Manifest, read_manifest, write_manifest
from interp_ray.store.writer import (check_parts, check_store, drill, finalize_store, part_skips, prepare_store,
                                     ShardAssembler, write_part)
from interp_ray.store.reader import (ActivationStore, data_context, expected_key, find_store, shuffled, store_location,
                                     widen_layers)

__all__ = ['ActivationStore', 'BASE_COLUMNS', 'DEFAULT_PART_BYTES', 'DEFAULT_SHARD_ROWS', 'DTYPE_FIELD_KEY', 'FORMAT',
           'InjectedFailure', 'KEY_HEX', 'LAYER_DTYPES', 'MANIFEST_FILE', 'Manifest', 'NARROW_DTYPES',
           'PARQUET_DATASOURCE_V2', 'PART_RE', 'ROW_GROUP_BYTES', 'SCHEMA_META_KEY', 'STREAM_BLOCK_MIB',
           'ShardAssembler', 'StoreKeyMismatch', 'TMP_MARK', 'UNREADABLE', 'WRITE_CHUNK_BYTES', 'atomic_write_bytes',
           'batch_from_arrow', 'bfloat16_bits', 'bfloat16_to_float32', 'build_part_table', 'check_parts',
           'check_store', 'data_context', 'drill', 'expected_key', 'extra_array', 'extra_spec', 'finalize_store',
           'find_store', 'layer_array', 'list_names', 'make_identity', 'pack_strings', 'part_files', 'part_metadata',
           'part_name', 'part_skips', 'prepare_store', 'read_manifest', 'read_part_metadata', 'resolve_location',
           'rows_per_part', 'shuffled', 'storage_identity', 'store_key', 'store_location', 'tensor_array',
           'unpack_strings', 'utc_now', 'widen', 'widen_layers', 'write_manifest', 'write_part']
