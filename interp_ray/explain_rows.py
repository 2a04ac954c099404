"""Running a registered method over dataset rows, for the explanation store: the method chosen and checked
(``MethodChoice``, ``check_method``), and ``ExplanationMapper``, which turns a batch of rows into the store's columns.

Beside ``interp_ray.session`` because it is the session's consumer: every method is built as the CLI and serving
build it (an ``ExplainSession``, its activations from ``ActivationExtractor``), a learned one from the checkpoint it
names (``MethodChoice.checkpoint``, whose content digest joins the store key). The store
(``interp_ray.saliency_store``) only receives the columns.

Ray-free: ``ExplanationMapper`` is a plain callable (batch dict in → batch dict out) that Ray Data runs in an actor
pool and tests call directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from interp_ray.data.base import fresh_float_images
from interp_ray.errors import UserError
from interp_ray.explainers.base import explainer_names, get_explainer
from interp_ray.jsonsafe import json_round_trip, json_safe
from interp_ray.saliency_store import EXPLANATION_COLUMN, EXTRA_PREFIX, SALIENCY_COLUMN
from interp_ray.session import ExplainSession

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
    return SALIENCY_COLUMN if "saliency" in get_explainer(name).produces else EXPLANATION_COLUMN


def check_method(name: str, options: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 checkpoint: str | None = None) -> MethodChoice:
    """Validate a method name, its params and (learned methods) its checkpoint without building anything.

    Unknown names, a learned method without a checkpoint (or a checkpoint for a method that takes none), a checkpoint
    that cannot be read and params the method's ``Params`` rejects are ``UserError``s. ``target`` is not a param
    here: the job's target rule sets it per row."""
    from interp_ray.checkpoint import content_digest

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
    return explainer_names(produces="saliency", needs_only={"image", "model"}, learned=False)


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

        images = fresh_float_images(batch["image"])  # the loader's uint8 pixels, or floats, as floats torch may own
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


__all__ = ["TARGET_RULES", "ExplanationMapper", "MethodChoice", "check_method", "constant_info", "output_column",
           "saliency_method_names", "scalar_extras", "target_column"]
