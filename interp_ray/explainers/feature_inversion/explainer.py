"""The ``feature_inversion`` explainer: Guided Feature Inversion (``optimisation``) behind the explainer protocol,
with the per-architecture default layers, the batch cut into chunks and one ``Explanation`` per image."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from interp_ray.errors import UserError
from interp_ray.explainers._common import (eval_mode, get_module, prepare_images, resolve_one_layer,
                                           resolve_targets, row_targets)
from interp_ray.explainers.base import Explainer, Explanation, classifier_model, register
from interp_ray.explainers.feature_inversion.config import (REQUEST_SETTINGS, FeatureInversionParams, GFISettings,
                                                            Variant)
from interp_ray.explainers.feature_inversion.defaults import layer_defaults
from interp_ray.explainers.feature_inversion.optimisation import GFIResult, run_gfi
from interp_ray.models import Classifier


def default_max_batch(device: torch.device) -> int:
    """Images optimised together. On a CPU the network's cost per image does not fall with the batch, and beyond
    ~8 images (scenes CNN, float64) the activations outgrow the caches and it rises (benchmarks/gfi.py); a GPU
    is launch-bound at small batches and gains from large ones."""
    return 32 if device.type == "cuda" else 8


def compute_model(model: Classifier, precision: str) -> Classifier:
    """The model to optimise against: itself for float32, else a float64 copy in eval mode (made per call, so it
    never goes stale if the caller goes on training the original)."""
    if precision == "float32":
        return model
    return copy.deepcopy(model).to(torch.float64).eval()


@register("feature_inversion")
class FeatureInversion(Explainer):
    """Guided Feature Inversion (Du et al., KDD'18): a class-discriminative mask from the model's own channels."""

    name = "feature_inversion"
    needs = frozenset({"image", "model"})
    produces = frozenset({"saliency"})
    slow = True   # two optimisations per image (~1 s each on a small CNN)
    Params = FeatureInversionParams
    summary_skips = frozenset({"weights", "stage1_saliency", "stage1_weights", "stage1_loss", "stage2_loss"})

    def __init__(self, model: Classifier, *, variant: Variant = "paper", inversion_layer: str | None = None,
                 base_layer: str | None = None, class_names: list[str] | None = None,
                 max_batch: int | None = None, **settings: Any):
        self.model = model
        self.class_names = class_names
        if max_batch is not None and max_batch < 1:
            raise UserError("max_batch must be >= 1")
        self.max_batch = max_batch
        defaults = self.defaults_for(model) if inversion_layer is None or base_layer is None else {}
        if "blur_sigma" in defaults and "blur_sigma" not in settings:
            settings["blur_sigma"] = defaults["blur_sigma"]
        self._overrides = dict(settings)
        self.settings = GFISettings.for_variant(variant, **settings)
        self.inversion_layer = resolve_one_layer(model, inversion_layer or defaults["inversion_layer"])
        self._explicit_base = base_layer is not None
        self._default_base = resolve_one_layer(model, base_layer or defaults["base_layer"])

    @classmethod
    def defaults_for(cls, classifier: Any) -> dict[str, Any]:
        """``{"inversion_layer": l0, "base_layer": l1}`` (plus ``blur_sigma`` where the paper's blur does not suit
        the data): the settings kept for a registered architecture (``defaults.ARCH_DEFAULTS``), a torchvision VGG's
        or ResNet's layers as the paper reads them, else the classifier's ``last_maps`` role (l1 the earlier map,
        l0 the later)."""
        return layer_defaults(cls, classifier_model(classifier))

    def base_layer(self, variant: str) -> str:
        """l1: the explicit or per-architecture layer; the code variant uses l0 unless l1 was given explicitly."""
        if variant == "code" and not self._explicit_base:
            return self.inversion_layer
        return self._default_base

    def request_settings(self, params: FeatureInversionParams) -> GFISettings:
        variant = params.variant or self.settings.variant
        overrides = {**self._overrides, **{k: getattr(params, k) for k in REQUEST_SETTINGS
                                              if getattr(params, k) is not None}}
        return GFISettings.for_variant(variant, **overrides)

    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        settings = self.request_settings(p)
        x = prepare_images(self.model, batch)
        wanted = row_targets(batch, len(x), p.target)
        base_name = self.base_layer(settings.variant)
        with eval_mode(self.model):
            targets = resolve_targets(self.model, x, wanted)
            model = compute_model(self.model, settings.precision)
            x = x.to(next(model.parameters()).dtype)
            chunk = self.max_batch or default_max_batch(x.device)
            results = [run_gfi(model, x[lo:lo + chunk], targets[lo:lo + chunk],
                               base_module=get_module(model, base_name),
                               inversion_module=get_module(model, self.inversion_layer), settings=settings)
                       for lo in range(0, len(x), chunk)]
        layers = {"inversion": self.inversion_layer, "base": base_name}
        return [e for r in results for e in self._explanations(r, settings, layers, p)]

    def _explanations(self, r: GFIResult, settings: GFISettings, layers: dict[str, str],
                      p: FeatureInversionParams) -> list[Explanation]:
        out = []
        for i in range(len(r.targets)):
            label = int(r.targets[i])
            extra: dict[str, Any] = {
                "variant": settings.variant, "layers": layers,
                "iterations": [settings.stage1_iterations, settings.stage2_iterations],
                "p_original": float(r.p_original[i]), "p_masked": float(r.p_masked[i]),
                "p_complement": float(r.p_complement[i]), "mask_area": float(r.mask[i].mean()),
                "fallback": bool(r.fallback[i]),
                "stage1_loss": _finite_or_none(r.stage1_loss[i]), "stage2_loss": _finite_or_none(r.stage2_loss[i])}
            if p.return_stage1:
                extra["stage1_saliency"] = r.stage1_mask[i].cpu().numpy().astype(np.float32)
                if bool(r.fallback[i]):  # the stage-2 mask that was set aside
                    extra["stage2_saliency"] = r.stage2_mask[i].cpu().numpy().astype(np.float32)
            if p.return_weights:
                extra["weights"] = r.weights[i].cpu().numpy().astype(np.float32)
                extra["stage1_weights"] = r.stage1_weights[i].cpu().numpy().astype(np.float32)
            out.append(Explanation(label=label, label_name=self.class_names[label] if self.class_names else None,
                                   method=self.name, saliency=r.mask[i].cpu().numpy().astype(np.float32),
                                   extra=extra))
        return out


def _finite_or_none(v: torch.Tensor) -> float | None:
    """JSON has no NaN: a stage that ran 0 iterations reports None."""
    f = float(v)
    return f if math.isfinite(f) else None


__all__ = ["FeatureInversion", "compute_model", "default_max_batch"]
