"""Writing a store: preparing it (resume, checks), assembling each shard's rows into parts, finishing it."""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from interp_ray.errors import UserError
from interp_ray.store.layout import (_exists, _info, _is_dir, _tmp_path, DTYPE_FIELD_KEY, InjectedFailure, list_names,
                                     MANIFEST_FILE, part_files, part_name, resolve_location, ROW_GROUP_BYTES,
                                     StoreKeyMismatch, TMP_MARK, UNREADABLE, utc_now, WRITE_CHUNK_BYTES)
from interp_ray.store.arrow import read_part_metadata
from interp_ray.store.manifest import Manifest, read_manifest, write_manifest

log = logging.getLogger("interp_ray.store")

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
    return set(part_skips(fs, directory, manifest))


def part_skips(fs: Any, directory: str, manifest: Manifest) -> dict[int, list[dict[str, Any]]]:
    """shard → the rows its part left out (unreadable input), for every part present and whole: a part's rows plus
    the rows it records as skipped are exactly its shard's range."""
    done = {}
    for shard, path in part_files(fs, directory).items():
        if shard >= manifest.num_shards:
            raise UserError(f"{path}: shard {shard} is beyond this store's {manifest.num_shards} shards")
        meta, num_rows = read_part_metadata(fs, path, manifest.META_KEY)
        lo, hi = manifest.shard_range(shard)
        if meta.get("key") != manifest.key:
            raise UserError(f"{path} belongs to store {meta.get('key')}, not {manifest.key}; refusing to mix them")
        skipped = list(meta.get("skipped") or [])
        if num_rows + len(skipped) != hi - lo or meta.get("rows") != [lo, hi]:
            raise UserError(f"{path} holds {num_rows} rows (and {len(skipped)} skipped), expected rows [{lo}, {hi}); "
                            f"delete it to recompute")
        done[shard] = skipped
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
    done = part_skips(fs, directory, manifest)
    missing = sorted(set(range(manifest.num_shards)) - set(done))
    if missing:
        raise RuntimeError(f"store {location} is missing {len(missing)} of {manifest.num_shards} shards "
                           f"(first: {missing[0]}); run the job again to finish it")
    skipped = sorted((row for rows in done.values() for row in rows), key=lambda r: r["index"])
    if manifest.rows and len(skipped) == manifest.rows:
        raise UserError(f"no input row of {location} could be read; the first: {skipped[0]['reason']}")
    if not manifest.complete or manifest.skipped != skipped:
        manifest.skipped = skipped
        manifest.complete, manifest.completed = True, manifest.completed or utc_now()
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
    columns, filled in place), so the memory is the parts in flight times the part size (``rows_per_part``).
    ``fail_after_shards`` raises (``fail_mode="raise"``) or stops forever (``"hang"``, to be killed) after that many
    parts were written by this assembler — a drill.
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

        cols, skipped = split_unreadable(cols)
        table = with_skipped(self.manifest.build_table(shard, cols), self.manifest.META_KEY, skipped)
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


def split_unreadable(cols: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """A shard's rows without those whose input was unreadable (``UNREADABLE``), and those as {index, reason}."""
    if UNREADABLE not in cols:
        return cols, []
    reasons = np.asarray([str(r) for r in cols[UNREADABLE]], dtype=object)
    bad = reasons != ""
    skipped = [{"index": int(i), "reason": str(r)} for i, r in zip(cols["index"][bad], reasons[bad])]
    return {k: (v[~bad] if bad.any() else v) for k, v in cols.items() if k != UNREADABLE}, skipped


def with_skipped(table, meta_key: bytes, skipped: list[dict[str, Any]]):
    """``table`` whose store metadata also lists the shard's ``skipped`` rows (what ``part_skips`` counts)."""
    if not skipped:
        return table
    meta = dict(table.schema.metadata or {})
    meta[meta_key] = json.dumps({**json.loads(meta[meta_key]), "skipped": skipped}, sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def dictionary_columns(schema) -> list[str]:
    """The Parquet columns worth a dictionary: label and prediction (a few distinct ints), and the values of bfloat16
    layers. A bfloat16 ReLU map holds few distinct 16-bit patterns and many zeros, so its dictionary page is small
    and its indices run-length encode: 15% smaller parts on ResNet-like maps (``tests/test_store.py``).
    float32 and float16 values are nearly all distinct: a dictionary there overflows, falls back to plain, and costs
    up to ~40% of the encoding CPU for parts ~8% larger, so they get none."""
    cols = ["label", "prediction"]
    for field in schema:
        if (field.metadata or {}).get(DTYPE_FIELD_KEY) == b"bfloat16":
            cols.append(f"{field.name}.list.element")  # a tensor column's leaf: the path Parquet dictionary-encodes
    return cols


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
        # Min/max statistics only where they help (the row index, small-cardinality ints); dictionaries only where
        # they pay (``dictionary_columns``: why).
        pq.write_table(table, out, compression=compression, use_dictionary=dictionary_columns(table.schema),
                       write_statistics=["index", "label", "prediction"], row_group_size=row_group_rows)
    size = _info(fs, tmp).size
    if _exists(fs, final):
        fs.delete_file(tmp)
        return None
    fs.move(tmp, final)
    return int(size or 0)
