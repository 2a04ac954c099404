"""Saliency baselines on the same classifier, through Captum: Grad-CAM, gradient, occlusion; and the centre baseline.

Each is its own registered explainer with the same contract as feature inversion (``image`` in, one H×W map in
[0, 1] per row out, ``target`` -1 = predicted), so the evaluation treats every method alike. Captum does the
attribution; this module only chooses the layer, sums channels, upsamples and normalises.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from interp_ray.errors import UserError
from interp_ray.explainers.base import Explainer, Explanation, classifier_model, register
from interp_ray.explainers._common import (eval_mode, get_module, normalise_maps, prepare_images, resolve_one_layer,
                                           resolve_targets, row_targets, torchvision_layers, upsample_maps)
from interp_ray.imageops import paper_blur
from interp_ray.models import Classifier


class TargetParams(BaseModel):
    """Per-request settings of the baselines."""

    model_config = ConfigDict(extra="forbid")

    target: int = Field(-1, ge=-1, description="class for rows without their own target; -1 = predicted")


class _ModelSaliency(Explainer):
    """Shared plumbing: checks, targets, eval mode, normalisation, one Explanation per row."""

    needs = frozenset({"image", "model"})
    produces = frozenset({"saliency"})
    Params = TargetParams

    def __init__(self, model: Classifier, *, class_names: list[str] | None = None):
        self.model = model
        self.class_names = class_names

    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        x = prepare_images(self.model, batch)
        with eval_mode(self.model):
            targets = resolve_targets(self.model, x, row_targets(batch, len(x), p.target))
            maps = normalise_maps(self.raw_maps(x, targets, p).detach()) if len(x) else x[:, 0]
        return [Explanation(label=int(t), label_name=self.class_names[int(t)] if self.class_names else None,
                            method=self.name, saliency=m.cpu().numpy().astype(np.float32), extra=self.extra())
                for t, m in zip(targets, maps)]

    def raw_maps(self, x: torch.Tensor, targets: torch.Tensor, params: BaseModel) -> torch.Tensor:
        """N×H×W unnormalised relevance (higher = more relevant)."""
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        return {}


# Grad-CAM's layer on registered architectures where the saliency role's map is not the one to read. flint_mnist:
# conv2, the last convolution. Its saliency role is relu2 (after pool, dropout and ReLU, read by an FC head without
# GAP), where the channel-weighted sum is negative everywhere for 3–9% of Fashion-MNIST test images after 2 epochs
# (36% in the main job), and Grad-CAM's ReLU makes those maps all zero; at conv2, 0 of 500 over 3 seeds.
# (digits_cnn's relu2 comes directly after its last convolution: the role's map is right there.)
GRADCAM_LAYERS = {"flint_mnist": "conv2"}


@register("gradcam")
class GradCAM(_ModelSaliency):
    """Grad-CAM (Selvaraju et al., ICCV'17) via Captum's LayerGradCam, upsampled bilinearly to the input."""

    name = "gradcam"

    def __init__(self, model: Classifier, *, layer: str | None = None, class_names: list[str] | None = None):
        super().__init__(model, class_names=class_names)
        self.layer = resolve_one_layer(model, layer or self.defaults_for(model)["layer"])

    @classmethod
    def defaults_for(cls, classifier) -> dict:
        """``{"layer": …}``: the saliency role (the last spatial map with a usable grid), except where
        ``GRADCAM_LAYERS`` names a better one; a VGG's last conv5 ReLU and a ResNet's ``layer4``, as the paper."""
        model = classifier_model(classifier)
        tv = torchvision_layers(model)
        layer = GRADCAM_LAYERS.get(getattr(model, "arch", None)) or tv.get("conv5_relu") or tv.get("layer4")
        return {"layer": layer or cls.role_layers(model, "saliency")[0]}

    def raw_maps(self, x, targets, params):
        from captum.attr import LayerGradCam

        cam = LayerGradCam(self.model, get_module(self.model, self.layer))
        maps = cam.attribute(x, target=targets, relu_attributions=True)  # N×1×h×w
        if maps.ndim != 4:
            raise UserError(f"Grad-CAM layer {self.layer!r} must give N×K×h×w maps, got {tuple(maps.shape)}")
        return upsample_maps(maps[:, 0], x.shape[-2:])

    def extra(self):
        return {"layer": self.layer}


@register("gradient")
class Gradient(_ModelSaliency):
    """Gradient saliency (Simonyan et al., 2014) via Captum's Saliency: max over channels of |∂score_c/∂x|."""

    name = "gradient"

    def raw_maps(self, x, targets, params):
        from captum.attr import Saliency

        grads = Saliency(self.model).attribute(x.clone().requires_grad_(True), target=targets, abs=True)
        return grads.max(1).values


class OcclusionParams(TargetParams):
    window: int | None = Field(None, ge=1, description="occluding square's side in pixels; default side/8")
    stride: int | None = Field(None, ge=1, description="step between windows; default window/2")


@register("occlusion")
class Occlusion(_ModelSaliency):
    """Occlusion (Zeiler & Fergus, 2014) via Captum: the drop in the class probability when a square is replaced by
    a baseline (blurred copy by default), averaged over the windows that cover a pixel; drops only (increases → 0)."""

    name = "occlusion"
    slow = True   # one forward pass per window position: seconds an image on a large input
    Params = OcclusionParams

    def __init__(self, model: Classifier, *, baseline: Literal["blur", "zero", "mean"] = "blur",
                 perturbations_per_eval: int = 64, class_names: list[str] | None = None):
        super().__init__(model, class_names=class_names)
        if baseline not in ("blur", "zero", "mean"):
            raise UserError(f"unknown occlusion baseline {baseline!r}; valid: blur, zero, mean")
        self.baseline, self.perturbations_per_eval = baseline, int(perturbations_per_eval)

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(x), 1)

    def raw_maps(self, x, targets, params):
        from captum.attr import Occlusion as CaptumOcclusion

        c, h, w = x.shape[1:]
        window = params.window or max(1, min(h, w) // 8)
        stride = params.stride or max(1, window // 2)
        if window > min(h, w):
            raise UserError(f"occlusion window {window} is larger than the image ({h}×{w})")
        attr = CaptumOcclusion(self._probabilities).attribute(
            x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
            baselines=self._baseline(x), target=targets, perturbations_per_eval=self.perturbations_per_eval)
        return attr.mean(1).clamp_min(0)

    def _baseline(self, x: torch.Tensor) -> torch.Tensor | float:
        if self.baseline == "zero":
            return 0.0
        if self.baseline == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
        return paper_blur(x)

    def extra(self):
        return {"baseline": self.baseline}


@register("center")
class CenterBaseline(Explainer):
    """The centre baseline of the pointing game: saliency falls off linearly from the image centre; ignores content."""

    name = "center"
    needs = frozenset({"image"})
    produces = frozenset({"saliency"})
    Params = TargetParams

    def __init__(self, model: Classifier | None = None, *, class_names: list[str] | None = None):
        self.model = model
        self.class_names = class_names

    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        if self.model is not None:
            x = prepare_images(self.model, batch)
            with eval_mode(self.model):
                targets = resolve_targets(self.model, x, row_targets(batch, len(x), p.target)).tolist()
            shape = tuple(x.shape[-2:])
        else:
            image = np.asarray(batch["image"])
            if image.ndim != 4:
                raise UserError(f"images must be N×C×H×W, got shape {image.shape}")
            targets, shape = row_targets(batch, len(image), p.target).tolist(), image.shape[-2:]
        sal = center_map(*shape)
        return [Explanation(label=int(t), label_name=self.class_names[t] if self.class_names and t >= 0 else None,
                            method=self.name, saliency=sal.copy()) for t in targets]


def center_map(h: int, w: int) -> np.ndarray:
    """float32 H×W: 1 at the centre, 0 at the farthest corner, linear in the distance."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.hypot(ys - (h - 1) / 2, xs - (w - 1) / 2)
    return (1.0 - d / max(float(d.max()), 1e-12)).astype(np.float32)
