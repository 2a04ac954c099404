"""The explanation store: one explanation per dataset row, in Parquet, keyed by what produced it.

The activation store's machinery (``interp_ray.store``: content-hash key, manifest, atomic part files never replaced,
resume by listing finished parts, refusal of a store or part of another key) is reused as is; this module adds what
differs — the identity, the columns and the callable that computes them.

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

Any registered method can fill a store: a learned one names its checkpoint (``MethodChoice.checkpoint``), whose
content digest joins the key, and is built, like every consumer builds it, as an ``ExplainSession`` (its activations
from ``ActivationExtractor``).

Ray-free: ``ExplanationMapper`` is a plain callable (batch dict in → batch dict out) that Ray Data runs in an actor
pool and tests call directly.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from interp_ray.errors import UserError
from interp_ray.jsonsafe import json_round_trip, json_safe
from interp_ray.store import ActivationStore, Manifest, store_key, tensor_array

SALIENCY_FORMAT = "interp-ray-explanations/1"
SALIENCY_META_KEY = b"interp_ray.explanations"
SALIENCY_COLUMN = "saliency"
EXPLANATION_COLUMN = "explanation"     # the other methods' rows: Explanation.to_json() as JSON text
EXTRA_PREFIX = "extra."
BASE_COLUMNS = ("index", "id", "label", "target", "prediction")
DEFAULT_SHARD_ROWS = 256      # masks are cheap to store but slow to compute (GFI: seconds per image): small parts
TARGET_RULES = ("label", "predicted")


# --- methods -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodChoice:
    """A registry method with its constructor options, per-request params (validated, every default filled in) and,
    for a learned method, its checkpoint and that checkpoint's content digest."""

    name: str
    options: dict[str, Any]       # constructor keyword arguments (e.g. variant, layer, max_batch)
    params: dict[str, Any]        # the explainer's ``Params``, validated and with every default filled in
    checkpoint: str | None = None         # a learned method's checkpoint (local path or URI)
    checkpoint_digest: str | None = None  # its content: what the store key hashes, not the location

    def identity(self) -> dict[str, Any]:
        ident = {"name": self.name, "options": self.options, "params": self.params}
        if self.checkpoint_digest is not None:  # absent for methods with no checkpoint: their keys stay as they were
            ident["checkpoint_digest"] = self.checkpoint_digest
        return ident

    @property
    def column(self) -> str:
        """The store column this method fills: ``saliency`` (an H×W mask) or ``explanation`` (JSON text)."""
        return output_column(self.name)


def output_column(name: str) -> str:
    from interp_ray.explainers import get_explainer

    return SALIENCY_COLUMN if "saliency" in get_explainer(name).produces else EXPLANATION_COLUMN


def check_method(name: str, options: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 checkpoint: str | None = None) -> MethodChoice:
    """Validate a method name, its params and (learned methods) its checkpoint without building anything.

    Unknown names, a learned method without a checkpoint (or a checkpoint for a method that takes none), a checkpoint
    that cannot be read and params the method's ``Params`` rejects are ``UserError``s. ``target`` is not a param
    here: the job's target rule sets it per row."""
    from interp_ray.checkpoint import content_digest
    from interp_ray.explainers import explainer_names, get_explainer

    if name not in explainer_names():
        raise UserError(f"unknown method {name!r}; valid: {', '.join(explainer_names())}")
    cls = get_explainer(name)
    if cls.learned and not checkpoint:
        raise UserError(f"method {name!r} is learned: give its checkpoint (methods[].checkpoint)")
    if checkpoint and not cls.learned:
        raise UserError(f"method {name!r} learns nothing and takes no checkpoint; remove methods[].checkpoint")
    params = dict(params or {})
    if "target" in params:
        raise UserError(f"method {name!r}: set the class to explain with the job's `target` rule, not params.target")
    checked = cls.parse_params(params)
    return MethodChoice(name, json_round_trip(dict(options or {})), json_round_trip(checked.model_dump()),
                        checkpoint=checkpoint or None,
                        checkpoint_digest=content_digest(checkpoint) if checkpoint else None)


def saliency_method_names() -> list[str]:
    """Registry methods that produce saliency from an image and the classifier alone (what the saliency report
    compares)."""
    from interp_ray.explainers import explainer_names, get_explainer

    out = []
    for n in explainer_names():
        cls = get_explainer(n)
        if "saliency" in cls.produces and cls.needs <= {"image", "model"} and not cls.learned:
            out.append(n)
    return out


# --- identity and manifest ---------------------------------------------------------------------------------------

def make_identity(*, checkpoint_digest: str, method: MethodChoice, dataset: dict[str, Any], split: str,
                  data: dict[str, Any] | None, target: str | int) -> dict[str, Any]:
    """What the key hashes: everything that selects the rows and everything that could change a mask."""
    if data is not None:
        data = {"name": data["name"], "options": dict(data.get("options") or {})}
    return json_round_trip({"format": SALIENCY_FORMAT, "checkpoint_digest": checkpoint_digest,
                      "method": method.identity(), "dataset": dataset, "split": split, "data": data,
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


# --- the callable ------------------------------------------------------------------------------------------------

def scalar_extras(extra: dict[str, Any]) -> dict[str, str]:
    """Name → column dtype of the per-row scalars in an ``Explanation.extra`` (None counts as a missing float)."""
    out = {}
    for k, v in extra.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = "bool"
        elif v is None or (isinstance(v, (int, float, np.integer, np.floating))):
            out[k] = "float64"
    return out


def constant_info(extra: dict[str, Any]) -> dict[str, Any]:
    """The non-scalar, JSON-sized parts of ``extra`` (layer names, variant, iteration counts): kept once per store."""
    return {k: json_safe(v) for k, v in extra.items()
            if k not in scalar_extras(extra) and not isinstance(v, np.ndarray)}


def target_column(rule: str | int, labels: np.ndarray) -> np.ndarray:
    """Per-row class to explain, as the explainers take it (-1 = the model's prediction)."""
    if rule == "label":
        return np.asarray(labels, dtype=np.int64)
    if rule == "predicted":
        return np.full(len(labels), -1, dtype=np.int64)
    return np.full(len(labels), int(rule), dtype=np.int64)


class ExplanationMapper:
    """Maps ``{"image", "id", "label", "index", "shard"}`` to the store's columns, for one method.

    Built once per Ray Data actor (loads the classifier and, for a learned method, its checkpoint: an
    ``ExplainSession``, as the CLI and serving build it); ``__call__`` is pure, so results do not depend on batch size,
    actor count or Ray vs no Ray. ``extras``: the extra columns to emit (from the manifest, so every part has the same
    schema); ``None`` emits whatever scalars the method reports. ``expect_digest``: refuse a classifier checkpoint
    whose content is not the one the store key was computed from (and ``choice.checkpoint_digest`` the method's).
    """

    def __init__(self, checkpoint: str | os.PathLike, method: dict[str, Any] | MethodChoice, *,
                 target: str | int = "label", extras: Sequence[str] | None = None, device: str | None = None,
                 torch_threads: int | None = None, expect_digest: str | None = None):
        from interp_ray.activations import load_worker_classifier
        from interp_ray.checkpoint import content_digest
        from interp_ray.session import ExplainSession

        loaded, self.device = load_worker_classifier(checkpoint, device=device, torch_threads=torch_threads,
                                                     expect_digest=expect_digest)
        self.digest = loaded.digest
        self.model_name: str = loaded.config["model"]["name"]
        self.class_names = list(loaded.class_names)
        self.choice = method if isinstance(method, MethodChoice) else MethodChoice(**method)
        if self.choice.checkpoint and self.choice.checkpoint_digest \
                and content_digest(self.choice.checkpoint) != self.choice.checkpoint_digest:
            raise UserError(f"{self.choice.name}'s checkpoint {self.choice.checkpoint} changed since the job was "
                            f"planned; rerun the job")
        # Built as every consumer builds it (the protocol's from_classifier): a bad option is a UserError.
        self.session = ExplainSession.build(self.choice.name, loaded, self.choice.checkpoint,
                                            device=str(self.device), **self.choice.options)
        self.model = self.session.model.eval()
        self.takes_target = self.session.explainer.takes_target()
        self.column = self.choice.column
        self.target = target
        self.extras = None if extras is None else list(extras)

    def explain(self, batch: dict[str, np.ndarray]) -> tuple[list, np.ndarray]:
        """(explanations, predictions) for a batch of images with the job's target rule (a method that explains the
        prediction, whatever the rule, records the class it explained in ``target``)."""
        import torch

        # Ray Data hands out read-only, zero-copy views: copy into memory torch may own.
        images = np.array(batch["image"], dtype=np.float32, copy=True)
        labels = np.asarray(batch["label"], dtype=np.int64) if "label" in batch else np.full(len(images), -1)
        if self.target == "label" and (labels < 0).any():
            raise UserError("target rule 'label' needs labelled rows; this dataset has unlabelled ones "
                            "(use target: predicted)")
        x = torch.from_numpy(images).to(self.device)
        self.model.check_input(x)
        with torch.inference_mode():
            predictions = self.model(x).argmax(1).cpu().numpy().astype(np.int64)
        targets = target_column(self.target, labels) if self.takes_target else None
        return self.session.explain(images, targets, self.choice.params), predictions

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        explanations, predictions = self.explain(batch)
        n = len(explanations)
        out: dict[str, np.ndarray] = {
            "id": np.asarray(batch["id"]) if "id" in batch else np.array([str(i) for i in range(n)]),
            "label": np.asarray(batch.get("label", np.full(n, -1)), dtype=np.int64),
            "target": np.array([e.label for e in explanations], dtype=np.int64),
            "prediction": predictions,
        }
        if self.column == SALIENCY_COLUMN:
            out[SALIENCY_COLUMN] = np.stack([np.asarray(e.saliency, dtype=np.float32) for e in explanations])
        else:
            out[EXPLANATION_COLUMN] = np.array([json.dumps(e.to_json(), sort_keys=True) for e in explanations],
                                               dtype=object)
        names = self.extras if self.extras is not None else list(scalar_extras(explanations[0].extra)) if n else []
        for name in names:
            values = [e.extra.get(name) for e in explanations]
            out[EXTRA_PREFIX + name] = np.array([np.nan if v is None else v for v in values])
        for key in ("index", "shard"):  # where the store puts the rows
            if key in batch:
                out[key] = np.asarray(batch[key])
        return out


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


__all__ = ["SaliencyManifest", "ExplanationMapper", "SaliencyStore", "MethodChoice", "check_method", "make_identity",
           "store_key", "store_location", "open_store", "saliency_method_names", "DEFAULT_SHARD_ROWS"]
