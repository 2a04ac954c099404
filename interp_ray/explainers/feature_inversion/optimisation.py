"""Guided Feature Inversion (Du, Liu, Song, Hu — KDD 2018): a saliency mask built from the network's own channels.

The mask is a non-negative weighted sum of the channels of a "base" layer l1, normalised to [0, 1] and upsampled to
the input: m(ω) = up(norm(Σ_k ω_k f_k^{l1}(x))). Where the mask is 0 the image is replaced by a blurred copy p:
Φ(m) = x·m + p·(1 − m), and its complement Φ_bg(m) = x·(1 − m) + p·m. The weights ω are optimised in two stages:

1. inversion — Φ must reproduce the features of the inversion layer l0 with a small mask:
   ``L1(ω) = ||f^{l0}(Φ) − f^{l0}(x)||² + γ·||ω||₁``
2. class discrimination, started from stage 1 — raise the target class on Φ and lower it on the complement:
   ``L2(ω) = −p_c(Φ) + λ·p_c(Φ_bg) + δ·||ω||₁`` (p_c = softmax probability of class c).

After each Adam step ω is clipped to ω ≥ 0.

Two variants (``variant=``):

``paper`` (default)  the paper's settings: 10 stage-1 + 70 stage-2 iterations, Adam lr 1e-2 (stage 2 from a fresh
                     Adam, its lr halved every 10 iterations), γ = 10, λ = 1, δ = 1, squared error, L1 on ω,
                     min-max normalisation, then bilinear upsampling; VGG-19: l0 = pool5, l1 = conv5_4.
``code``             the authors' released main.py: one Adam over 80 iterations (the first 11 are stage 1), lr 1e-2
                     halved every 10 iterations from the start, relative squared error ||a − a₀||²/||a₀||², squared
                     L2 on ω with weights 5 (stage 1) and 2 (stage 2), upsampling first (align_corners=True) then
                     (m − min)/max; l1 = l0 = pool5.

Additions, each switchable: ``class_score="log_prob"`` raises log p_c(Φ) instead of p_c(Φ) (the paper's
probability has no gradient left for a class the model gives ~1e-6); ``fallback_to_stage1`` (on by default)
returns the stage-1 mask where stage 2 ends with no mask or with p_c(Φ) <= p_c(Φ_bg) (``extra["fallback"]``);
the blur is 11 px at 224 px scaled to the input, except where an architecture's defaults say otherwise
(scenes_cnn: σ = 8 px, see ``explainers._common.default_layers``). Computation is in float64 by default
(``precision``): that is what makes batched and single runs agree (see ``GFISettings.precision``).

Batching: every image has its own row of ω (N×K). Losses are summed over images, so the gradient of row n depends on
image n only, and Adam is elementwise, so a batch gives the same masks as one image at a time (the model runs in
eval mode: BatchNorm in train mode would couple the rows). Gradients go to ω only (``backward(inputs=...)``): the
model's parameters never accumulate ``.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interp_ray.errors import UserError
from interp_ray.explainers._common import normalise_maps, upsample_maps
from interp_ray.explainers.feature_inversion.config import GFISettings
from interp_ray.imageops import gaussian_blur, paper_blur_sigma
from interp_ray.models import Classifier


@dataclass
class GFIResult:
    """Per-image outputs of one optimisation; tensors have N rows."""

    mask: torch.Tensor             # N×H×W in [0, 1], after stage 2 (or stage 1 where ``fallback``)
    stage1_mask: torch.Tensor      # N×H×W in [0, 1], after stage 1
    stage2_mask: torch.Tensor      # N×H×W in [0, 1], after stage 2 (whatever ``fallback`` says)
    weights: torch.Tensor          # N×K, >= 0
    stage1_weights: torch.Tensor   # N×K, >= 0
    targets: torch.Tensor          # N
    p_original: torch.Tensor       # p_c(x)
    p_masked: torch.Tensor         # p_c(Φ) with the final mask
    p_complement: torch.Tensor     # p_c(Φ_bg) with the final mask
    stage1_loss: torch.Tensor      # last stage-1 loss per image (nan when stage 1 ran 0 iterations)
    stage2_loss: torch.Tensor      # last stage-2 loss per image (nan when stage 2 ran 0 iterations)
    fallback: torch.Tensor         # bool N: stage 2 found no discriminative mask, ``mask`` is the stage-1 mask


# ---------------------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------------------


def make_background(x: torch.Tensor, settings: GFISettings) -> torch.Tensor:
    """The image a mask value of 0 reveals: a blurred copy (paper) or each channel's mean."""
    if settings.background == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    sigma = settings.blur_sigma or paper_blur_sigma(x.shape[-1])
    return gaussian_blur(x, sigma)


def make_mask(weights: torch.Tensor, base: torch.Tensor, size: tuple[int, int], settings: GFISettings) -> torch.Tensor:
    """m = up(norm(Σ_k ω_k f_k)) (paper) or norm(up(Σ_k ω_k f_k)) (code): N×H×W."""
    m = torch.einsum("nk,nkhw->nhw", weights, base)
    if settings.upsample_first:
        m = upsample_maps(m, size, align_corners=True)
    m = _normalise(m, settings.normalisation)
    if not settings.upsample_first:
        m = upsample_maps(m, size)
    return m


def _normalise(m: torch.Tensor, how: str) -> torch.Tensor:
    if how == "minmax":
        return normalise_maps(m)
    flat = m.reshape(len(m), -1)  # the code's (m − min) / max; max > 0 whenever any weight is
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / hi.clamp_min(1e-12)).reshape(m.shape)


def composites(x: torch.Tensor, p: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Φ = x·m + p·(1 − m) (the kept evidence) and Φ_bg = x·(1 − m) + p·m (everything but it)."""
    m = m[:, None]
    return x * m + p * (1 - m), x * (1 - m) + p * m


def regulariser(weights: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image ||ω||₁ (paper) or ||ω||² (code)."""
    return weights.abs().sum(1) if kind == "l1" else (weights * weights).sum(1)


def inversion_error(acts: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image ||a − a₀||² (paper) or ||a − a₀||²/||a₀||² (code)."""
    err = ((acts - ref) ** 2).flatten(1).sum(1)
    return err if kind == "squared" else err / (ref * ref).flatten(1).sum(1).clamp_min(1e-12)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def forward_to(model: Classifier, x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """The output of ``module`` for input ``x``; the layers after it are not run (stage 1 needs only l0)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["out"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "out" not in store:
        raise UserError(f"layer {type(module).__name__} did not run in the forward pass")
    return store["out"]


# ---------------------------------------------------------------------------------------------------------------
# The optimisation
# ---------------------------------------------------------------------------------------------------------------


class _Problem:
    """The fixed quantities of one batch and the two per-image losses as functions of ω."""

    def __init__(self, model: Classifier, x: torch.Tensor, targets: torch.Tensor, base_module, inversion_module,
                 settings: GFISettings):
        self.model, self.x, self.targets, self.settings = model, x, targets, settings
        self.inversion_module = inversion_module
        self.size = (x.shape[-2], x.shape[-1])
        with torch.no_grad():
            # clone: a torchvision ReLU(inplace=True) further on may overwrite a captured tensor
            self.base = forward_to(model, x, base_module).detach().clone()
            self.ref = forward_to(model, x, inversion_module).detach().clone()
            self.background = make_background(x, settings)
            self.p_original = F.softmax(model(x), 1).gather(1, targets[:, None])[:, 0]
        if self.base.ndim != 4:
            raise UserError(f"the base layer must give N×K×h×w feature maps, got shape {tuple(self.base.shape)}")

    @property
    def channels(self) -> int:
        return self.base.shape[1]

    def mask(self, weights: torch.Tensor) -> torch.Tensor:
        return make_mask(weights, self.base, self.size, self.settings)

    def stage1_loss(self, weights: torch.Tensor) -> torch.Tensor:
        kept, _ = composites(self.x, self.background, self.mask(weights))
        acts = forward_to(self.model, kept, self.inversion_module)
        s = self.settings
        return inversion_error(acts, self.ref, s.inversion_loss) + s.gamma * regulariser(weights, s.regulariser)

    def class_probabilities(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p_c(Φ), p_c(Φ_bg) per image, from one forward pass over both composites."""
        kept, removed = composites(self.x, self.background, self.mask(weights))
        probs = F.softmax(self.model(torch.cat([kept, removed])), 1)
        p = probs.gather(1, self.targets.repeat(2)[:, None])[:, 0]
        return p[: len(self.x)], p[len(self.x):]

    def stage2_loss(self, weights: torch.Tensor) -> torch.Tensor:
        s = self.settings
        kept, removed = composites(self.x, self.background, self.mask(weights))
        logp = F.log_softmax(self.model(torch.cat([kept, removed])), 1)
        logp = logp.gather(1, self.targets.repeat(2)[:, None])[:, 0]
        logp_kept, p_removed = logp[: len(self.x)], logp[len(self.x):].exp()
        raise_term = logp_kept if s.class_score == "log_prob" else logp_kept.exp()
        return -raise_term + s.lam * p_removed + s.delta * regulariser(weights, s.regulariser)


def _step(optimizer: torch.optim.Optimizer, weights: torch.Tensor, per_image_loss: torch.Tensor) -> None:
    """One Adam step on the summed per-image losses, then the projection ω ≥ 0."""
    optimizer.zero_grad(set_to_none=True)
    per_image_loss.sum().backward(inputs=[weights])
    optimizer.step()
    with torch.no_grad():
        weights.clamp_(min=0.0)


def _decay(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] *= factor


def _adam(weights: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    # foreach=False: the same elementwise kernel whatever N, so batch and single runs take identical steps
    return torch.optim.Adam([weights], lr=lr, foreach=False)


def run_gfi(model: Classifier, x: torch.Tensor, targets: torch.Tensor, *, base_module: torch.nn.Module,
            inversion_module: torch.nn.Module, settings: GFISettings) -> GFIResult:
    """Optimise ω for a batch (model already in eval mode); see the module docstring for the two variants."""
    prob = _Problem(model, x, targets, base_module, inversion_module, settings)
    weights = torch.full((len(x), prob.channels), settings.init_weight, dtype=x.dtype, device=x.device,
                         requires_grad=True)
    stage1_weights, loss1, loss2 = _optimise(prob, weights, settings)
    return _result(prob, weights.detach(), stage1_weights, loss1, loss2, settings)


def _optimise(prob: _Problem, weights: torch.Tensor, s: GFISettings
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run both stages in place on ``weights``; returns the stage-1 weights and each stage's last loss."""
    loss1 = torch.full((len(weights),), float("nan"), device=weights.device)
    loss2 = loss1.clone()
    optimizer = _adam(weights, s.lr)
    stage1_weights = weights.detach().clone()
    for i in range(s.stage1_iterations + s.stage2_iterations):
        in_stage1 = i < s.stage1_iterations
        if i == s.stage1_iterations:
            stage1_weights = weights.detach().clone()
            if not s.shared_optimizer:
                optimizer = _adam(weights, s.lr)  # paper: stage 2 is its own run (Algorithm 2)
        loss = prob.stage1_loss(weights) if in_stage1 else prob.stage2_loss(weights)
        _step(optimizer, weights, loss)
        if in_stage1:
            loss1 = loss.detach()
        else:
            loss2 = loss.detach()
        # paper: halve every 10 iterations of stage 2; code: every 10 iterations counted from the start
        counter = i + 1 if s.shared_optimizer else (0 if in_stage1 else i + 1 - s.stage1_iterations)
        if counter > 0 and counter % s.lr_decay_every == 0:
            _decay(optimizer, s.lr_decay)
    if s.stage2_iterations == 0:
        stage1_weights = weights.detach().clone()
    return stage1_weights, loss1, loss2


@torch.no_grad()
def _result(prob: _Problem, final: torch.Tensor, stage1_weights: torch.Tensor, loss1: torch.Tensor,
            loss2: torch.Tensor, s: GFISettings) -> GFIResult:
    p_kept, p_removed = prob.class_probabilities(final)
    stage2_mask, stage1_mask = _display_mask(prob, final), _display_mask(prob, stage1_weights)
    failed = ((final.sum(1) == 0) | (p_kept <= p_removed)) & (s.stage2_iterations > 0) & s.fallback_to_stage1
    mask = torch.where(failed[:, None, None], stage1_mask, stage2_mask)
    return GFIResult(mask=mask, stage1_mask=stage1_mask, stage2_mask=stage2_mask, weights=final.clone(),
                     stage1_weights=stage1_weights, targets=prob.targets, p_original=prob.p_original,
                     p_masked=p_kept, p_complement=p_removed, stage1_loss=loss1, stage2_loss=loss2,
                     fallback=failed)


def _display_mask(prob: _Problem, weights: torch.Tensor) -> torch.Tensor:
    """The mask as returned: min-max to [0, 1] (the code variant's (m − min)/max can fall short of 1)."""
    return normalise_maps(prob.mask(weights))


__all__ = ["GFIResult", "composites", "forward_to", "inversion_error", "make_background", "make_mask", "regulariser",
           "run_gfi"]
