"""Reading a store: ``ActivationStore`` (rows, batches, Ray Data), finding a store by what produced it."""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from interp_ray.errors import UserError
from interp_ray.store.layout import (make_identity, MANIFEST_FILE, NARROW_DTYPES, PARQUET_DATASOURCE_V2, part_files,
                                     part_name, resolve_location, store_key, StoreKeyMismatch, STREAM_BLOCK_MIB, widen)
from interp_ray.store.arrow import batch_from_arrow, read_part_metadata
from interp_ray.store.manifest import Manifest, read_manifest

log = logging.getLogger("interp_ray.store")

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
        """Rows held: the split's rows less those skipped as unreadable (``index`` keeps each row's own number)."""
        return self.manifest.rows - len(self.manifest.skipped)

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
