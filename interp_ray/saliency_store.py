"""The explanation store: one explanation per dataset row, in Parquet, keyed by what produced it.

The activation store's machinery (``interp_ray.store``: content-hash key, manifest, atomic part files never replaced,
resume by listing finished parts, refusal of a store or part of another key) is reused as is; this module adds what
differs — the identity and the columns.

Layout::

    <root>/<model name>/<method>/<key>/
        _manifest.json          identity (checkpoint digest, method, options, params, dataset, split, target rule),
                                mask shape, extras, method info, row/shard counts, complete flag
        part-000000.parquet     rows [0, S) of the split, sorted by row index …

``key`` = the first 16 hex digits of sha256 over the identity: anything that could change a mask changes it.

Columns: ``index`` (int64, row of the split), ``id`` (string), ``label`` (the dataset's class), ``target`` (the class
explained), ``prediction`` (the model's class), ``saliency`` (``fixed_shape_tensor<float32>[H, W]``), then one column
per scalar extra the method reports (``extra.p_masked``, ``extra.fallback`` … for feature inversion). A method that
produces no saliency (a captioner, FLINT's attributes, CNN-INTE's path) has ``explanation`` instead: the row's
explanation as the JSON text the CLI and HTTP API give (``Explanation.to_json``). Every part's schema metadata
(``interp_ray.explanations``) records the key, method, options, params and mask shape.

The store is handed columns and knows no method: which method a store holds is a name and an identity in its
manifest. Running a method over rows to make those columns is ``interp_ray.explain_rows`` (``ExplanationMapper``).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np

from interp_ray.errors import UserError
from interp_ray.jsonsafe import json_round_trip
from interp_ray.store import ActivationStore, Manifest, store_key, tensor_array

SALIENCY_FORMAT = "interp-ray-explanations/1"
SALIENCY_META_KEY = b"interp_ray.explanations"
SALIENCY_COLUMN = "saliency"
EXPLANATION_COLUMN = "explanation"     # the other methods' rows: Explanation.to_json() as JSON text
EXTRA_PREFIX = "extra."
BASE_COLUMNS = ("index", "id", "label", "target", "prediction")
DEFAULT_SHARD_ROWS = 256      # masks are cheap to store but slow to compute (GFI: seconds per image): small parts


# --- identity and manifest ---------------------------------------------------------------------------------------

def make_identity(*, checkpoint_digest: str, method: dict[str, Any], dataset: dict[str, Any], split: str,
                  data: dict[str, Any] | None, target: str | int) -> dict[str, Any]:
    """What the key hashes: everything that selects the rows and everything that could change a mask. ``method``:
    the method's identity (its name, options, params and checkpoint digest: ``MethodChoice.identity()``). ``data``:
    how to load the rows again: the loader's name and options, and ``rows`` when only the split's first rows were
    explained (kept only then, so a whole split's key is what it always was)."""
    if data is not None:
        head = {"rows": int(data["rows"])} if data.get("rows") is not None else {}
        data = {"name": data["name"], "options": dict(data.get("options") or {}), **head}
    return json_round_trip({"format": SALIENCY_FORMAT, "checkpoint_digest": checkpoint_digest,
                      "method": method, "dataset": dataset, "split": split, "data": data,
                      "target": target})


@dataclass
class SaliencyManifest(Manifest):
    """The activation store's manifest with a saliency store's identity and columns.

    ``layers`` holds one entry: ``saliency`` → {"shape": [H, W]}, or ``explanation`` → {"dtype": "json"} for a method
    that produces no saliency; ``extras`` maps each extra column to its dtype ("float64" or "bool"); ``method_info``
    keeps what the method reports identically for every row (its layers, variant …), taken from a dry run at
    planning."""

    FORMAT_ID: ClassVar[str] = SALIENCY_FORMAT
    META_KEY: ClassVar[bytes] = SALIENCY_META_KEY
    KIND: ClassVar[str] = "explanation store"
    CONTENT: ClassVar[str] = "explanations"

    format: str = SALIENCY_FORMAT
    extras: dict[str, str] = field(default_factory=dict)
    method_info: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.identity["method"]["name"]

    @property
    def column(self) -> str:
        return EXPLANATION_COLUMN if EXPLANATION_COLUMN in self.layers else SALIENCY_COLUMN

    @property
    def mask_shape(self) -> tuple[int, int]:
        if self.column != SALIENCY_COLUMN:
            raise UserError(f"store {self.key} holds {self.method}'s explanations, not saliency masks")
        return tuple(self.layers[SALIENCY_COLUMN]["shape"])  # type: ignore[return-value]

    def describe_key(self) -> str:
        ident = self.identity
        return (f"key {self.key} (checkpoint {str(ident.get('checkpoint_digest'))[:12]}, method "
                f"{ident.get('method', {}).get('name')}, dataset {ident.get('dataset', {}).get('name')}, "
                f"split {ident.get('split')}, target {ident.get('target')})")

    def column_names(self) -> list[str]:
        return [*BASE_COLUMNS, self.column, *(EXTRA_PREFIX + k for k in self.extras)]

    def part_metadata(self, shard: int) -> dict[str, Any]:
        lo, hi = self.shard_range(shard)
        ident = self.identity
        return {"format": SALIENCY_FORMAT, "key": self.key, "shard": shard, "rows": [lo, hi],
                "checkpoint_digest": ident["checkpoint_digest"], "model": self.model,
                "method": ident["method"]["name"], "options": ident["method"]["options"],
                "params": ident["method"]["params"],
                **({"mask_shape": list(self.mask_shape)} if self.column == SALIENCY_COLUMN else {}),
                "dataset": ident["dataset"], "split": ident["split"], "target": ident["target"]}

    def build_table(self, shard: int, cols: dict[str, np.ndarray]):
        import pyarrow as pa

        arrays = {"index": pa.array(np.asarray(cols["index"], dtype=np.int64)),
                  "id": pa.array([str(x) for x in cols["id"]], type=pa.string()),
                  **{c: pa.array(np.asarray(cols[c], dtype=np.int64)) for c in ("label", "target", "prediction")}}
        if self.column == SALIENCY_COLUMN:
            masks = np.asarray(cols[SALIENCY_COLUMN])
            if tuple(masks.shape[1:]) != self.mask_shape:
                raise RuntimeError(f"masks have shape {masks.shape[1:]}, the manifest says {self.mask_shape}")
            arrays[SALIENCY_COLUMN] = tensor_array(masks)
        else:
            texts = [str(t) for t in cols[EXPLANATION_COLUMN]]
            if any(not t for t in texts):
                raise RuntimeError(f"a row of store {self.key} has no explanation")
            arrays[EXPLANATION_COLUMN] = pa.array(texts, type=pa.string())
        for name, dtype in self.extras.items():
            arrays[EXTRA_PREFIX + name] = pa.array(np.asarray(cols[EXTRA_PREFIX + name], dtype=dtype))
        meta = {SALIENCY_META_KEY: json.dumps(self.part_metadata(shard), sort_keys=True).encode()}
        return pa.table(arrays).replace_schema_metadata(meta)


def store_location(root: str, model_name: str, method: str, key: str) -> str:
    """``<root>/<model name>/<method>/<key>`` (a URI root stays a URI)."""
    from interp_ray.storage import is_remote, join

    if is_remote(root):
        return join(root, model_name, method, key)
    return posixpath.join(str(root).rstrip("/"), model_name, method, key)


# --- reading -----------------------------------------------------------------------------------------------------

class SaliencyStore(ActivationStore):
    """A finished explanation store, read-only: masks as N×H×W numpy arrays or torch tensors, by row or by id, or
    (a method with no saliency) the explanations as the dicts the HTTP API gives."""

    MANIFEST = SaliencyManifest
    manifest: SaliencyManifest

    @property
    def method(self) -> str:
        return self.manifest.method

    @property
    def mask_shape(self) -> tuple[int, int]:
        return self.manifest.mask_shape

    def masks(self, ids: Iterable[str] | None = None, *, format: str = "numpy") -> Any:
        """N×H×W masks, for ``ids`` in that order (all rows in row order when ``None``); an unknown id is a
        ``UserError``."""
        got = self.read(columns=["id", SALIENCY_COLUMN])
        masks = got[SALIENCY_COLUMN]
        if ids is not None:
            position = {str(i): k for k, i in enumerate(got["id"])}
            wanted = [str(i) for i in ids]
            missing = [i for i in wanted if i not in position]
            if missing:
                raise UserError(f"id {missing[0]!r} is not in store {self.key} ({len(missing)} unknown)")
            masks = masks[[position[i] for i in wanted]]
        if format == "torch":
            import torch

            return torch.from_numpy(np.array(masks))
        if format != "numpy":
            raise UserError(f"format must be 'numpy' or 'torch', got {format!r}")
        return masks

    def explanations(self) -> list[dict[str, Any]]:
        """Every row's explanation in row order (``Explanation.to_json``), for a store of a method with no saliency."""
        if self.manifest.column != EXPLANATION_COLUMN:
            raise UserError(f"store {self.key} holds saliency masks: read them with masks()")
        return [json.loads(t) for t in self.read(columns=[EXPLANATION_COLUMN])[EXPLANATION_COLUMN]]

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"location": self.location, "key": m.key, "rows": m.rows, "shards": m.num_shards,
                "method": m.identity["method"], "column": m.column,
                "mask_shape": list(m.mask_shape) if m.column == SALIENCY_COLUMN else None, "extras": m.extras,
                "model": m.model, "dataset": m.identity["dataset"], "split": m.identity["split"],
                "target": m.identity["target"], "complete": m.complete}


def open_store(location: str, *, key: str | None = None) -> SaliencyStore:
    return SaliencyStore.open(location, key=key)  # type: ignore[return-value]


__all__ = ["SaliencyManifest", "SaliencyStore", "make_identity", "store_key", "store_location", "open_store",
           "DEFAULT_SHARD_ROWS"]
