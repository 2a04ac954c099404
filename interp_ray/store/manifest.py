"""The store's manifest: what a store holds (identity, layers, rows per part, completion), read and written
atomically beside its parts."""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from interp_ray.errors import UserError
from interp_ray.store.layout import (_exists, atomic_write_bytes, BASE_COLUMNS, FORMAT, LAYER_DTYPES, MANIFEST_FILE,
                                     SCHEMA_META_KEY, store_key, utc_now)
from interp_ray.store.arrow import build_part_table


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
    # rows left out because their input could not be read: {"index", "reason"}, collected from the parts at the end
    skipped: list[dict[str, Any]] = field(default_factory=list)
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



def read_manifest(fs: Any, directory: str, cls: type[Manifest] = Manifest) -> Manifest | None:
    path = posixpath.join(directory, MANIFEST_FILE)
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    return cls.from_json(text, source=path)


def write_manifest(fs: Any, directory: str, manifest: Manifest) -> None:
    atomic_write_bytes(fs, posixpath.join(directory, MANIFEST_FILE), manifest.to_json().encode())
