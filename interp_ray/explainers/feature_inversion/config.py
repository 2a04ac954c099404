"""Guided Feature Inversion's settings: every knob of the optimisation (``GFISettings``, one variant's defaults by
``for_variant``) and the per-request parameters. Plain values only, no torch: checked before any model is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from interp_ray.errors import UserError

Variant = Literal["paper", "code"]
# The settings a request may change (``FeatureInversionParams``); the rest are the explainer's.
REQUEST_SETTINGS = ("stage1_iterations", "stage2_iterations", "lr", "class_score")


@dataclass(frozen=True)
class GFISettings:
    """Every knob of the optimisation; ``GFISettings.for_variant(v)`` gives a variant's defaults."""

    variant: Variant = "paper"
    stage1_iterations: int = 10
    stage2_iterations: int = 70
    lr: float = 1e-2
    lr_decay: float = 0.5
    lr_decay_every: int = 10           # iterations between lr decays (paper: of stage 2; code: of the whole run)
    init_weight: float = 0.1           # every ω_k starts here
    gamma: float = 10.0                # stage-1 regulariser weight
    lam: float = 1.0                   # weight of the complement's class probability in stage 2
    delta: float = 1.0                 # stage-2 regulariser weight (the paper uses 10 for the VOC pointing game)
    regulariser: Literal["l1", "l2sq"] = "l1"
    # What stage 2 raises on Φ and lowers on Φ_bg. The paper: the softmax probability. Its gradient p(1 − p)
    # vanishes for a class the model gives ~1e-6 (the second object of a two-object scene to a confident model),
    # and then the regulariser alone drives ω to 0; "log_prob" (−log p_c(Φ) + λ·p_c(Φ_bg)) keeps a gradient.
    class_score: Literal["prob", "log_prob"] = "prob"
    # Not in the paper: when stage 2 ends with every weight at 0 (no mask is left) or with p_c(Φ) <= p_c(Φ_bg)
    # (the mask keeps no more class evidence than its complement — e.g. the class survives the blur), stage 2 found
    # no class-discriminative mask; return the stage-1 mask instead of a blank or arbitrary one, and say so in
    # extra["fallback"]. False gives the paper's output unchanged.
    fallback_to_stage1: bool = True
    inversion_loss: Literal["squared", "relative"] = "squared"
    normalisation: Literal["minmax", "min_over_max"] = "minmax"
    upsample_first: bool = False       # code: upsample (align_corners=True), then normalise
    shared_optimizer: bool = False     # code: one Adam across both stages
    background: Literal["blur", "mean"] = "blur"
    blur_sigma: float | None = None    # None: 11 px at 224 px, scaled with the input side
    # float64: the optimisation is chaotic where the mask's max/min cell switches or a weight hits 0, so the
    # ~1e-6 differences between batched and single-image float32 convolutions can grow to 1e-2 in a mask; in
    # float64 they start ~1e-15 and a batch gives the same masks as one image at a time. Costs ~2× on a CPU.
    precision: Literal["float64", "float32"] = "float64"

    @staticmethod
    def for_variant(variant: str, **overrides: Any) -> "GFISettings":
        if variant not in ("paper", "code"):
            raise UserError(f"unknown variant {variant!r}; valid: paper, code")
        base = {"variant": variant}
        if variant == "code":
            base.update(stage1_iterations=11, stage2_iterations=69, gamma=5.0, delta=2.0, regulariser="l2sq",
                        inversion_loss="relative", normalisation="min_over_max", upsample_first=True,
                        shared_optimizer=True)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GFISettings)})
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)} for feature_inversion; valid: "
                            f"{', '.join(f.name for f in dataclasses.fields(GFISettings))}")
        settings = GFISettings(**{**base, **overrides})
        settings.check()
        return settings

    def check(self) -> None:
        if self.stage1_iterations < 0 or self.stage2_iterations < 0:
            raise UserError("iterations must be >= 0")
        if self.lr <= 0 or self.lr_decay_every < 1 or not 0 < self.lr_decay <= 1:
            raise UserError("lr must be > 0, lr_decay in (0, 1], lr_decay_every >= 1")
        if self.init_weight < 0 or min(self.gamma, self.lam, self.delta) < 0:
            raise UserError("init_weight, gamma, lam and delta must be >= 0")
        if self.blur_sigma is not None and self.blur_sigma <= 0:
            raise UserError("blur_sigma must be > 0")


class FeatureInversionParams(BaseModel):
    """Per-request settings; unset fields keep the explainer's own."""

    model_config = ConfigDict(extra="forbid")

    target: int = Field(-1, ge=-1, description="class for rows without their own target; -1 = predicted")
    variant: Variant | None = Field(None, description="'paper' (default) or 'code' (the authors' main.py)")
    stage1_iterations: int | None = Field(None, ge=0, le=1000)
    stage2_iterations: int | None = Field(None, ge=0, le=1000)
    lr: float | None = Field(None, gt=0, le=10)
    class_score: Literal["prob", "log_prob"] | None = Field(None, description="stage-2 score; 'prob' = paper")
    return_stage1: bool = Field(False, description="add the stage-1 mask as extra['stage1_saliency']")
    return_weights: bool = Field(False, description="add the channel weights ω as extra['weights']")


__all__ = ["REQUEST_SETTINGS", "FeatureInversionParams", "GFISettings", "Variant"]
