"""FLINT — a Framework to Learn with INTerpretation (Parekh, Mozharovskyi, d'Alché-Buc, NeurIPS 2021).

A predictor f and an interpreter g = h ∘ Φ are trained together (joint FLINT) or g alone against a frozen f
(post-hoc FLINT). The pieces, as the authors' code builds them (``networks.py``, ``flint.py``):

* Φ(x) = Ψ(f_I(x)) ∈ R^J: J "attribute functions" fed by hidden layers I of f (``AttributeFunctions``);
* h: Dropout(0.01) → Linear(J → C), g(x) = softmax(h(Φ(x))) (``Interpreter``);
* d: a decoder reconstructing x from Φ (``Decoder``).

Losses, computed exactly as the code does (``flint_losses``; the test checks them on a hand-worked example):

* ``pred`` = CE(f(x), y)
* ``fid``  = −mean_x Σ_c softmax(f(x))_c · log softmax(h(Φ(x)))_c, **f(x) detached** (``loss_cce(expl, output.detach())``);
  f's hidden layers still receive gradients through Φ(f_I(x)).
* ``rec``  = MSE(d(Φ(x)), x), mean over every element (``nn.MSELoss``); L1 for CIFAR-10 (``recon_loss="l1"``).
* ``ent``  = mean_x E(|Φ(x)|) − E(mean_x |Φ(x)|), E(v) = −Σ softmax(v) log softmax(v), per mini-batch
  (conciseness − diversity; the code's ``loss_ent``).
* ``l1``   = mean |Φ| over every element of the batch (``nn.L1Loss()(embed, 0)``; i.e. ||Φ(x)||₁ / J, batch-averaged).

The total is Σ_term weight(term, epoch) · term, with the warm-up schedules of the code (``SCHEDULES``; epochs are
counted from 1 as in ``for epoch in range(1, N_EPOCH + 1)``). Terms whose weight is 0 are still computed and
multiplied by 0, so every parameter takes part in every step (DDP needs that) and the random streams of a BASE run
(all interpretation weights 0) and a FLINT run are the same: the only difference between them is the losses.

Interpretation (paper §3; ``analyze_img``, ``collect_g_data``, ``sparse_sense``):

* contribution α_{j,c,x} = φ_j(x) · w_{j,c}, with c = ĉ(x), the class g predicts (or a requested target);
* local relevance r_{j,x} = α_{j,ĉ,x} / max_i |α_{i,ĉ,x}|; local interpretation = {φ_j : r_{j,x} > 1/τ};
* global relevance r_{j,c} = mean of r_{j,x} over x with ĉ(x) = c (a random training subset of
  ``relevance_samples`` rows, 1,020 as in the code); global interpretation = {(c, φ_j) : r_{j,c} > 1/τ};
* conciseness CNS(τ) = mean_x |{j : r_{j,x} > 1/τ}|, in two readings: ``absolute=True`` counts |α_j| > max|α|/τ
  (the demo notebook), ``absolute=False`` counts α_j > max α / τ (``sparse_sense`` in ``flint.py``).

Visualisation: maximum-activating samples MAS(c, φ_j, l) (top-l samples of true class c by φ_j) and activation
maximisation with partial initialisation (AM+PI): maximise C·φ_j(x) − λ_tv TV(x) − λ_bound B(x) − λ_1 ||x||₁ from
κ·x₀ with Adam, 12 rounds × ``n_iter`` steps, lr 0.05 halved each round (``optimize_inp``). Pictures are written by
``interp_ray.explainers.flint_plots``.

Everything here is plain PyTorch; ``jobs/train_flint.py`` runs ``flint_train_epoch`` inside Ray Train.
"""

from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from interp_ray.config import DataConfig, ModelConfig, OptimConfig, RunSection, ScalingSection, Section
from interp_ray.errors import UserError
from interp_ray.explainers.base import Explainer, Explanation, register
from interp_ray.models import Classifier

TERMS: tuple[str, ...] = ("pred", "rec", "fid", "l1", "ent")
TAUS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)  # the code's ``mults``
CHECKPOINT_KIND = "flint"
MAS_FILE = "mas.npz"

# ---------------------------------------------------------------------------------------------------------------
# Loss-weight schedules
# ---------------------------------------------------------------------------------------------------------------

Step = tuple[int, float]  # (first epoch, counted from 1; weight from that epoch on)


class ScheduleSection(Section):
    """Loss weights by epoch. Each term is a list of ``[first_epoch, weight]`` steps (epochs counted from 1, as the
    authors' loop counts them); the weight at epoch e is that of the last step with first_epoch ≤ e, 0 before the
    first step. ``pred`` is λ_acc, ``rec`` γ, ``fid`` β, ``l1`` δη, ``ent`` δ."""

    pred: list[Step] = Field(default_factory=lambda: [(1, 1.0)])
    rec: list[Step] = Field(default_factory=list)
    fid: list[Step] = Field(default_factory=list)
    l1: list[Step] = Field(default_factory=list)
    ent: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_steps(self) -> "ScheduleSection":
        for term in TERMS:
            steps = getattr(self, term)
            firsts = [s[0] for s in steps]
            if firsts != sorted(firsts) or len(set(firsts)) != len(firsts) or any(e < 1 for e in firsts):
                raise ValueError(f"schedule {term}: first epochs must be >= 1, increasing and distinct; got {firsts}")
            if any(w < 0 for _, w in steps):
                raise ValueError(f"schedule {term}: weights must be >= 0")
        return self

    def weights(self, epoch: int) -> dict[str, float]:
        """The weight of every term at ``epoch`` (counted from 1)."""
        out = {}
        for term in TERMS:
            w = 0.0
            for first, value in getattr(self, term):
                if epoch >= first:
                    w = float(value)
            out[term] = w
        return out


# From ``flint.py``'s training loop: lmbd_rec = γ·[epoch > 0], lmbd_expl = β·[epoch > 2], lmbd_spa, lmbd_ent, with
# ``epoch`` running 1..N. CUB's weights were not released; "cub" is the CIFAR-10 schedule (PAPERS.md [R]).
SCHEDULES: dict[str, dict[str, list[Step]]] = {
    "mnist": {"pred": [(1, 1.0)], "rec": [(1, 0.8)], "fid": [(3, 0.5)], "l1": [(3, 0.1)], "ent": [(5, 0.2)]},
    "quickdraw": {"pred": [(1, 1.0)], "rec": [(1, 5.0)], "fid": [(3, 0.1)], "l1": [(2, 0.02), (3, 0.30)],
                  "ent": [(4, 0.1)]},
    "cifar10": {"pred": [(1, 1.0)], "rec": [(1, 2.0)], "fid": [(3, 0.6)], "l1": [(2, 0.001), (3, 0.15)],
                "ent": [(4, 0.2)]},
    "cub": {"pred": [(1, 1.0)], "rec": [(1, 2.0)], "fid": [(3, 0.6)], "l1": [(2, 0.001), (3, 0.15)],
            "ent": [(4, 0.2)]},
}
ScheduleName = Literal["mnist", "quickdraw", "cifar10", "cub"]


def schedule_preset(name: str) -> ScheduleSection:
    if name not in SCHEDULES:
        raise UserError(f"unknown FLINT schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return ScheduleSection.model_validate(SCHEDULES[name])


# ---------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------

def entropy(v: torch.Tensor) -> torch.Tensor:
    """E(v) = −Σ_i p_i log p_i with p = softmax(v) over the last axis (one value per row)."""
    logp = F.log_softmax(v, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def soft_cross_entropy(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The code's ``loss_cce``: mean over rows of −Σ_c softmax(target)_c · log softmax(prediction)_c."""
    return -(F.softmax(target, dim=1) * F.log_softmax(prediction, dim=1)).sum(1).mean()


class FlintOutput(NamedTuple):
    logits: torch.Tensor         # f(x), N×C
    phi: torch.Tensor            # Φ(x), N×J
    interp_logits: torch.Tensor  # h(Φ(x)), N×C (g = softmax of these)
    recon: torch.Tensor          # d(Φ(x)), N×C×H×W


def flint_losses(out: FlintOutput, x: torch.Tensor, y: torch.Tensor | None, *,
                 recon_loss: Literal["mse", "l1"] = "mse") -> dict[str, torch.Tensor]:
    """Every loss term, unweighted (see the module docstring). ``y`` None → ``pred`` is 0 (post-hoc, unlabelled)."""
    phi_abs = out.phi.abs()
    pred = F.cross_entropy(out.logits, y) if y is not None else out.logits.sum() * 0.0
    rec = (F.mse_loss if recon_loss == "mse" else F.l1_loss)(out.recon, x)
    fid = soft_cross_entropy(out.interp_logits, out.logits.detach())
    ent = entropy(phi_abs).mean() - entropy(phi_abs.mean(0))
    l1 = phi_abs.mean()
    return {"pred": pred, "rec": rec, "fid": fid, "l1": l1, "ent": ent}


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight·term. Zero weights still multiply (keeps every parameter in the graph; see module docstring)."""
    return sum(float(weights.get(t, 0.0)) * terms[t] for t in TERMS)


# ---------------------------------------------------------------------------------------------------------------
# Architecture: Ψ, h, d and the combined module
# ---------------------------------------------------------------------------------------------------------------

def _activation(name: str) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU()
    if name == "relu":
        return nn.ReLU()
    raise UserError(f"unknown activation {name!r}; valid: leaky_relu, relu")


class AttributeFunctions(nn.Module):
    """Ψ: hidden maps of f → Φ ∈ R^J.

    One spatial tap (the MNIST net, ``attr_MNIST``): conv3×3(C→m)+act → AdaptiveAvgPool(3) → FC(9m→J)+act.
    Several spatial taps (``attr_RN18_multi``: ResNet layer3 + layer4 block 1): conv3×3(C_i→m)+act on each, the
    larger maps with stride = their size ratio to the smallest (2 for layer3 → layer4), concatenated →
    conv3×3(k·m→m)+act → AdaptiveAvgPool(3) → FC(9m→J)+act. Vector taps (N×D, e.g. a dense layer) get FC(D→m)+act
    and join before the last FC.
    """

    def __init__(self, tap_shapes: Sequence[Sequence[int]], n_attributes: int, *, channels: int = 64,
                 activation: str = "leaky_relu", pool: int = 3):
        super().__init__()
        self.tap_shapes = [tuple(int(s) for s in shape) for shape in tap_shapes]
        if not self.tap_shapes:
            raise UserError("FLINT needs at least one hidden layer of the predictor")
        maps = [s for s in self.tap_shapes if len(s) == 3]
        if any(len(s) not in (1, 3) for s in self.tap_shapes):
            raise UserError(f"FLINT taps must be C×H×W maps or vectors, got shapes {self.tap_shapes}")
        self.target_hw = min((s[1], s[2]) for s in maps) if maps else None
        self.branches = nn.ModuleList()
        for shape in self.tap_shapes:
            if len(shape) == 3:
                stride = shape[1] // self.target_hw[0] if shape[1] % self.target_hw[0] == 0 else 1
                self.branches.append(nn.Sequential(nn.Conv2d(shape[0], channels, 3, stride=stride, padding=1),
                                                   _activation(activation)))
            else:
                self.branches.append(nn.Sequential(nn.Linear(shape[0], channels), _activation(activation)))
        self.mix = (nn.Sequential(nn.Conv2d(len(maps) * channels, channels, 3, padding=1), _activation(activation))
                    if len(maps) > 1 else nn.Identity())
        self.pool = nn.AdaptiveAvgPool2d(pool)
        n_vec = len(self.tap_shapes) - len(maps)
        self.fc = nn.Linear((channels * pool * pool if maps else 0) + channels * n_vec, n_attributes)
        self.out_act = _activation(activation)

    def forward(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        spatial, vectors = [], []
        for branch, t in zip(self.branches, taps):
            z = branch(t.flatten(1) if t.ndim == 2 else t)
            if z.ndim == 4:
                if tuple(z.shape[-2:]) != self.target_hw:
                    z = F.adaptive_avg_pool2d(z, self.target_hw)
                spatial.append(z)
            else:
                vectors.append(z)
        parts = []
        if spatial:
            parts.append(self.pool(self.mix(torch.cat(spatial, 1))).flatten(1))
        parts.extend(vectors)
        return self.out_act(self.fc(torch.cat(parts, 1)))


class Interpreter(nn.Module):
    """h: Dropout(p) → Linear(J → C) (the code's ``explainer``); g = softmax(h(Φ))."""

    def __init__(self, n_attributes: int, num_classes: int, dropout: float = 0.01):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(n_attributes, num_classes)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(phi))


class Decoder(nn.Module):
    """d: Φ → x̂.

    ``convt`` (``decode_MNIST``): FC(J → c0·(H/4)·(W/4)) → ConvT(c0→c1, k3 s2)+ReLU → ConvT(c1→C, k3 s2) → out act.
    ``upsample`` (``decoder_v2``, for large inputs): FC(J → c0·h0·w0) → k × (upsample ×2, conv3×3, BN, ReLU) →
    conv3×3 → C channels, with h0 = H / 2^k ≤ 8.
    """

    def __init__(self, n_attributes: int, out_shape: Sequence[int], *, kind: str = "convt",
                 channels: Sequence[int] = (2, 8), output_activation: str = "relu"):
        super().__init__()
        c, h, w = (int(s) for s in out_shape)
        self.kind, self.out_shape = kind, (c, h, w)
        channels = [int(ch) for ch in channels]
        if kind == "convt":
            if h % 4 or w % 4 or len(channels) != 2:
                raise UserError(f"convt decoder needs H, W divisible by 4 and 2 channel counts; got {out_shape}, "
                                f"{channels}")
            self.start = (channels[0], h // 4, w // 4)
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(channels[0], channels[1], 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                nn.ConvTranspose2d(channels[1], c, 3, stride=2, padding=1, output_padding=1)]
        elif kind == "upsample":
            k = 0
            while h % 2 ** (k + 1) == 0 and w % 2 ** (k + 1) == 0 and h // 2 ** k > 8:
                k += 1
            self.start = (channels[0], h // 2 ** k, w // 2 ** k)
            layers, prev = [], channels[0]
            for i in range(k):
                nxt = channels[min(i + 1, len(channels) - 1)]
                layers += [nn.Upsample(scale_factor=2), nn.Conv2d(prev, nxt, 3, padding=1), nn.BatchNorm2d(nxt),
                           nn.ReLU()]
                prev = nxt
            layers.append(nn.Conv2d(prev, c, 3, padding=1))
        else:
            raise UserError(f"unknown decoder {kind!r}; valid: convt, upsample")
        if output_activation == "relu":
            layers.append(nn.ReLU())
        elif output_activation == "sigmoid":
            layers.append(nn.Sigmoid())
        elif output_activation != "none":
            raise UserError(f"unknown decoder output activation {output_activation!r}; valid: relu, sigmoid, none")
        self.fc = nn.Linear(n_attributes, int(np.prod(self.start)))
        self.body = nn.Sequential(*layers)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(phi).view(-1, *self.start))


class FlintModel(nn.Module):
    """f, Ψ, h, d in one module (one DDP wrapper, one state dict). ``forward(x) -> FlintOutput``.

    ``frozen=True`` (post-hoc FLINT): f stays in eval mode and runs without gradients; only Ψ, h and d learn.
    ``global_relevance`` (C×J) is filled after training by ``compute_global_relevance`` and saved with the weights.
    """

    def __init__(self, predictor: Classifier, layers: Sequence[str], psi: AttributeFunctions,
                 interpreter: Interpreter, decoder: Decoder, *, frozen: bool = False):
        super().__init__()
        self.predictor, self.layers = predictor, list(layers)
        self.psi, self.interpreter, self.decoder = psi, interpreter, decoder
        self.frozen = bool(frozen)
        if self.frozen:
            for p in self.predictor.parameters():
                p.requires_grad_(False)
        self.register_buffer("global_relevance", torch.zeros(predictor.num_classes, interpreter.fc.in_features))

    @property
    def n_attributes(self) -> int:
        return self.interpreter.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.predictor.num_classes

    def train(self, mode: bool = True) -> "FlintModel":
        super().train(mode)
        if self.frozen:
            self.predictor.eval()
        return self

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.frozen:
            with torch.no_grad():
                return self.predictor.activations(x, self.layers, with_logits=True)
        return self.predictor.activations(x, self.layers, with_logits=True)

    def forward(self, x: torch.Tensor) -> FlintOutput:
        t = self.taps(x)
        phi = self.psi([t[name] for name in self.layers])
        return FlintOutput(t["logits"], phi, self.interpreter(phi), self.decoder(phi))

    def attributes(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x) alone (no decoder, no interpreter); differentiable in x (used by AM+PI)."""
        t = self.predictor.activations(x, self.layers)
        return self.psi([t[name] for name in self.layers])


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------

class FlintSection(Section):
    """The interpreter's architecture, losses and interpretation settings; ``None`` = the predictor's default."""

    mode: Literal["joint", "posthoc", "base"] = "joint"  # base: f alone, same loop, every interpretation weight 0
    predictor_checkpoint: str | None = None              # post-hoc: the frozen classifier (interp-ray checkpoint)
    layers: list[str] | None = None
    n_attributes: int = Field(25, gt=0)
    psi_channels: int = Field(64, gt=0)
    psi_activation: Literal["leaky_relu", "relu"] | None = None
    decoder: Literal["convt", "upsample"] | None = None
    decoder_channels: list[int] | None = None
    decoder_output: Literal["relu", "sigmoid", "none"] = "relu"
    recon_loss: Literal["mse", "l1"] = "mse"
    interpreter_dropout: float = Field(0.01, ge=0, lt=1)
    schedule: ScheduleName | ScheduleSection = "mnist"
    tau: float = Field(2.0, gt=0)                        # threshold 1/τ on relevance
    taus: list[float] = Field(default_factory=lambda: list(TAUS))
    relevance_samples: int = Field(1020, gt=0)           # training rows for global relevance (the code: 51×20)
    n_mas: int = Field(3, gt=0)                          # maximum-activating samples kept per attribute

    @field_validator("schedule", mode="before")
    @classmethod
    def _known_schedule(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in SCHEDULES:
            raise ValueError(f"unknown FLINT schedule {v!r}; valid: {', '.join(SCHEDULES)} (or a mapping of steps)")
        return v

    @model_validator(mode="after")
    def _posthoc_needs_predictor(self) -> "FlintSection":
        if self.mode == "posthoc" and not self.predictor_checkpoint:
            raise ValueError("mode 'posthoc' needs predictor_checkpoint (a trained classifier)")
        return self

    def resolved_schedule(self) -> ScheduleSection:
        base = schedule_preset(self.schedule) if isinstance(self.schedule, str) else self.schedule
        data = base.model_dump()
        if self.mode == "posthoc":
            data["pred"] = []
        elif self.mode == "base":
            data = {"pred": data["pred"]}
        return ScheduleSection.model_validate(data)


class FlintOptimConfig(OptimConfig):
    """Defaults of the MNIST run of the code: Adam (AdamW with weight decay 0), lr 1e-4 constant, batch 16, 12 epochs."""

    epochs: int = Field(12, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["cosine", "constant"] = "constant"
    lr_steps: list[tuple[int, float]] = Field(default_factory=list)  # [[epoch (from 1), lr]]: CIFAR 4e-5 at 19


class AMSection(Section):
    """Activation maximisation with partial initialisation (``optimize_inp``), MNIST/QuickDraw constants."""

    kappa: float = Field(0.3, ge=0)        # initialisation κ·x₀
    C: float = 2.0
    lambda_tv: float = 6.0
    lambda_bound: float = 10.0
    lambda_l1: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)
    lr: float = Field(0.05, gt=0)
    lr_decay: float = Field(0.5, gt=0, le=1)
    rounds: int = Field(12, gt=0)
    n_iter: int = Field(50, gt=0)


class PicturesSection(Section):
    enabled: bool = False
    dir: str | None = None                 # default: <output>/pictures
    max_pairs: int = Field(40, gt=0)       # at most this many (class, attribute) pairs get a picture
    am: AMSection = Field(default_factory=AMSection)


class FlintJobConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)  # the predictor (joint/base); post-hoc reads the checkpoint
    flint: FlintSection = Field(default_factory=FlintSection)
    train: FlintOptimConfig = Field(default_factory=FlintOptimConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    pictures: PicturesSection = Field(default_factory=PicturesSection)
    materialize_rows: int = Field(20000, ge=0)  # datasets up to this many rows are generated once, kept in memory
    output: str = "outputs/flint_digits"


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------

def default_architecture(predictor: Classifier) -> dict[str, Any]:
    """Taps, Ψ activation and decoder for the registry's predictors: what the model declares in
    ``explainer_defaults["flint"]`` (flint_mnist), else recognised by structure, like saliency_utils.

    digits_cnn: the conv block after pooling (``pool``, 2w×4×4), as the MNIST net's 32×14×14 feature block.
    scenes_cnn: ``relu3`` and ``relu4`` (the two last conv maps, sizes 2:1), the RN18-multi pattern.
    torchvision ResNet: ``layer3`` and the first block of ``layer4`` (``layer4.0``), as the code's ResNet-18.
    """
    import torchvision.models as tvm

    declared = getattr(predictor, "explainer_defaults", {}).get("flint")
    if declared:  # the model's own declaration (e.g. flint_mnist) wins over recognising it by structure
        return {"layers": list(declared["layers"]), "psi_activation": declared.get("psi_activation", "leaky_relu"),
                "decoder": declared.get("decoder", "convt"),
                "decoder_channels": list(declared.get("decoder_channels", [8, 16]))}
    names = set(predictor.layer_names())
    if isinstance(predictor.net, tvm.ResNet):
        return {"layers": ["layer3", "layer4.0"], "psi_activation": "relu", "decoder": "upsample",
                "decoder_channels": [128, 128, 128, 64]}
    if {"relu4", "gap"} <= names:
        return {"layers": ["relu3", "relu4"], "psi_activation": "relu", "decoder": "convt",
                "decoder_channels": [10, 24]}
    if {"relu2", "pool", "fc1"} <= names:
        return {"layers": ["pool"], "psi_activation": "leaky_relu", "decoder": "convt", "decoder_channels": [8, 16]}
    return {"layers": predictor.default_layers[:1], "psi_activation": "leaky_relu",
            "decoder": "convt" if predictor.image_size % 4 == 0 else "upsample", "decoder_channels": [8, 16]}


def resolved_flint_spec(predictor: Classifier, section: FlintSection) -> dict[str, Any]:
    """The architecture actually built: the section's values, defaults filled from ``default_architecture``."""
    arch = default_architecture(predictor)
    layers = section.layers or arch["layers"]
    if not layers:
        raise UserError("no default FLINT layers for this predictor; set flint.layers "
                        f"(valid: {', '.join(predictor.layer_names())})")
    return {"layers": predictor.resolve_layers(layers), "n_attributes": section.n_attributes,
            "psi_channels": section.psi_channels, "psi_activation": section.psi_activation or arch["psi_activation"],
            "decoder": section.decoder or arch["decoder"],
            "decoder_channels": section.decoder_channels or arch["decoder_channels"],
            "decoder_output": section.decoder_output, "interpreter_dropout": section.interpreter_dropout,
            "recon_loss": section.recon_loss, "frozen": section.mode == "posthoc"}


def build_flint(predictor: Classifier, spec: dict[str, Any]) -> FlintModel:
    """Ψ, h, d sized from one dummy forward of ``predictor`` (its taps' shapes), as ``resolved_flint_spec`` says."""
    was_training = predictor.training
    predictor.eval()
    with torch.no_grad():
        dummy = torch.zeros(2, *predictor.input_shape, device=next(predictor.parameters()).device)
        taps = predictor.activations(dummy, spec["layers"])
    predictor.train(was_training)
    shapes = [tuple(taps[name].shape[1:]) for name in spec["layers"]]
    psi = AttributeFunctions(shapes, spec["n_attributes"], channels=spec["psi_channels"],
                             activation=spec["psi_activation"])
    interp = Interpreter(spec["n_attributes"], predictor.num_classes, spec["interpreter_dropout"])
    dec = Decoder(spec["n_attributes"], predictor.input_shape, kind=spec["decoder"],
                  channels=spec["decoder_channels"], output_activation=spec["decoder_output"])
    return FlintModel(predictor, spec["layers"], psi, interp, dec, frozen=spec["frozen"])


def make_flint_optimizer(model: nn.Module, opt_cfg: FlintOptimConfig):
    """Adam over every trainable parameter (f, Ψ, h, d jointly; Ψ, h, d post-hoc), optional cosine / step lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
    steps = sorted(opt_cfg.lr_steps)

    def factor(epoch_index: int) -> float:  # LambdaLR's argument is the number of scheduler steps taken (0-based)
        f = 0.5 * (1 + math.cos(math.pi * epoch_index / opt_cfg.epochs)) if opt_cfg.schedule == "cosine" else 1.0
        for first, lr in steps:
            if epoch_index + 1 >= first:
                f = lr / opt_cfg.lr
        return f

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def materialize(ds, limit: int):
    """A generated dataset of at most ``limit`` rows as an in-memory ArrayDataset (images, labels, attributes), so
    epochs do not regenerate it; other datasets (and larger ones) are returned as they are."""
    from interp_ray.data.base import ArrayDataset

    if isinstance(ds, ArrayDataset) or len(ds) > limit:
        return ds
    batch = ds.get_batch(np.arange(len(ds)))
    extras = {k: batch[k] for k in ("attributes",) if k in batch}
    return ArrayDataset(name=ds.name, split=ds.split, images=batch["image"], labels=batch["label"],
                        class_names=list(ds.class_names), ids=batch["id"], extras=extras)


# ---------------------------------------------------------------------------------------------------------------
# One epoch, evaluation, collection — plain PyTorch, used by Ray Train workers and by ``train_local``
# ---------------------------------------------------------------------------------------------------------------

def flint_train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                      weights: dict[str, float], *, recon_loss: str = "mse", max_shift: int = 0) -> dict[str, float]:
    """One pass over ``loader`` of (images, labels), minimising Σ weights·terms. ``model`` may be DDP-wrapped."""
    from interp_ray.training import random_shift

    model.train()
    sums = {t: 0.0 for t in (*TERMS, "loss")}
    correct_f = correct_g = agree = seen = 0
    for images, labels in loader:
        images = random_shift(images, max_shift)
        x, y = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        out = model(x)
        terms = flint_losses(out, x, y, recon_loss=recon_loss)
        loss = total_loss(terms, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(y)
        for t in TERMS:
            sums[t] += terms[t].item() * n
        sums["loss"] += loss.item() * n
        pf, pg = out.logits.argmax(1), out.interp_logits.argmax(1)
        correct_f += (pf == y).sum().item()
        correct_g += (pg == y).sum().item()
        agree += (pf == pg).sum().item()
        seen += n
    s = max(seen, 1)
    return {**{k: v / s for k, v in sums.items()}, "accuracy_f": correct_f / s, "accuracy_g": correct_g / s,
            "fidelity": agree / s, "samples": seen}


@torch.no_grad()
def collect(model: FlintModel, loader, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Run ``model`` (eval mode) over a loader of (images, labels): phi, logits of f and of h, labels."""
    was = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"phi": [], "logits": [], "interp_logits": [], "labels": []}
    try:
        for images, labels in loader:
            o = model(images.to(device))
            out["phi"].append(o.phi.cpu().numpy())
            out["logits"].append(o.logits.cpu().numpy())
            out["interp_logits"].append(o.interp_logits.cpu().numpy())
            out["labels"].append(labels.numpy())
    finally:
        model.train(was)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


@torch.no_grad()
def flint_evaluate(model: FlintModel, loader, device: torch.device | str = "cpu", *, recon_loss: str = "mse",
                   weights: dict[str, float] | None = None) -> dict[str, float]:
    """Accuracy of f and g, fidelity (argmax g = argmax f), top-5 fidelity and the mean of each loss term."""
    was = model.training
    model.eval()
    sums = {t: 0.0 for t in TERMS}
    cf = cg = agree = top5 = seen = 0
    try:
        for images, labels in loader:
            x, y = images.to(device), labels.to(device)
            out = model(x)
            terms = flint_losses(out, x, y, recon_loss=recon_loss)
            n = len(y)
            for t in TERMS:
                sums[t] += terms[t].item() * n
            pf, pg = out.logits.argmax(1), out.interp_logits.argmax(1)
            k = min(5, out.interp_logits.shape[1])
            top5 += (out.interp_logits.topk(k, 1).indices == pf[:, None]).any(1).sum().item()
            cf += (pf == y).sum().item()
            cg += (pg == y).sum().item()
            agree += (pf == pg).sum().item()
            seen += n
    finally:
        model.train(was)
    s = max(seen, 1)
    res = {**{t: v / s for t, v in sums.items()}, "accuracy_f": cf / s, "accuracy_g": cg / s, "fidelity": agree / s,
           "fidelity_top5": top5 / s, "samples": seen}
    if weights is not None:
        res["loss"] = sum(weights.get(t, 0.0) * res[t] for t in TERMS)
    return res


# ---------------------------------------------------------------------------------------------------------------
# Interpretation: relevance, local / global interpretations, conciseness
# ---------------------------------------------------------------------------------------------------------------

def contributions(phi: np.ndarray, weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """α_{j,c,x} = φ_j(x) · w_{j,c} for each row's class c; ``weight`` is h's C×J matrix. N×J."""
    phi, weight = np.asarray(phi, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    return phi * weight[np.asarray(classes, dtype=np.int64)]


def relevance(alpha: np.ndarray) -> np.ndarray:
    """r_{j,x} = α_{j,x} / max_i |α_{i,x}| (a row of zeros stays zeros)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    scale = np.abs(alpha).max(axis=1, keepdims=True)
    return np.divide(alpha, scale, out=np.zeros_like(alpha), where=scale > 0)


def local_interpretation(r_row: np.ndarray, tau: float) -> list[tuple[int, float]]:
    """[(j, r_j)] for r_j > 1/τ, most relevant first."""
    r_row = np.asarray(r_row)
    idx = np.flatnonzero(r_row > 1.0 / tau)
    return [(int(j), float(r_row[j])) for j in idx[np.argsort(-r_row[idx], kind="stable")]]


def global_relevance(r: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """r_{j,c} = mean of r_{j,x} over rows whose (predicted) class is c; C×J (0 for a class no row has)."""
    r, classes = np.asarray(r, dtype=np.float64), np.asarray(classes, dtype=np.int64)
    out = np.zeros((num_classes, r.shape[1]))
    for c in range(num_classes):
        rows = classes == c
        if rows.any():
            out[c] = r[rows].mean(0)
    return out


def global_interpretation(rel: np.ndarray, tau: float) -> list[tuple[int, int, float]]:
    """[(c, j, r_{j,c})] with r_{j,c} > 1/τ, by class then relevance (highest first)."""
    out = []
    for c in range(rel.shape[0]):
        idx = np.flatnonzero(rel[c] > 1.0 / tau)
        out += [(c, int(j), float(rel[c, j])) for j in idx[np.argsort(-rel[c, idx], kind="stable")]]
    return out


def conciseness(alpha: np.ndarray, tau: float, *, absolute: bool = True) -> float:
    """CNS(τ): mean number of attributes per row above 1/τ of the row's largest contribution.

    absolute=True: |α_j| > max_i |α_i| / τ (the demo notebook); False: α_j > max_i α_i / τ (``sparse_sense``).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if not len(alpha):
        return float("nan")
    a = np.abs(alpha) if absolute else alpha
    return float((a > a.max(axis=1, keepdims=True) / tau).sum(1).mean())


def interpretation_metrics(data: dict[str, np.ndarray], weight: np.ndarray, taus: Sequence[float]) -> dict[str, Any]:
    """Accuracy of f and g, fidelity, and CNS(τ) in both readings from ``collect``'s arrays."""
    pf, pg = data["logits"].argmax(1), data["interp_logits"].argmax(1)
    alpha = contributions(data["phi"], weight, pg)
    out: dict[str, Any] = {"accuracy_f": float((pf == data["labels"]).mean()),
                           "accuracy_g": float((pg == data["labels"]).mean()), "fidelity": float((pf == pg).mean()),
                           "samples": int(len(pf))}
    for tau in taus:
        out[f"cns_{tau:g}"] = conciseness(alpha, tau, absolute=True)
        out[f"cns_code_{tau:g}"] = conciseness(alpha, tau, absolute=False)
    out["active_attributes"] = int((data["phi"].std(0) > 1e-6).sum()) if len(pf) else 0
    return out


def compute_global_relevance(model: FlintModel, ds, *, samples: int, seed: int = 21, batch_size: int = 256,
                             device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, dict]:
    """Global relevance (C×J) on a random subset of ``samples`` rows of ``ds``; written into the model's buffer.

    Also returns the subset's indices and its ``collect`` arrays (MAS are chosen from the same subset, as in the code).
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(ds))[:samples])
    loader = _subset_loader(ds, idx, batch_size)
    data = collect(model, loader, device)
    pg = data["interp_logits"].argmax(1)
    rel = global_relevance(relevance(contributions(data["phi"], _weight(model), pg)), pg, model.num_classes)
    model.global_relevance.copy_(torch.as_tensor(rel, dtype=model.global_relevance.dtype))
    return rel, idx, data


def _weight(model: FlintModel) -> np.ndarray:
    return model.interpreter.fc.weight.detach().cpu().numpy()


def _subset_loader(ds, idx: np.ndarray, batch_size: int):
    sampler = list(int(i) for i in idx)
    return ds.loader(batch_size, sampler=sampler)


def max_activating(phi: np.ndarray, labels: np.ndarray | None, j: int, *, cls: int | None = None,
                   count: int = 3) -> np.ndarray:
    """Row indices of the ``count`` largest φ_j, among rows of class ``cls`` when given (MAS(c, φ_j, l))."""
    rows = np.arange(len(phi)) if cls is None else np.flatnonzero(np.asarray(labels) == cls)
    order = np.argsort(-np.asarray(phi)[rows, j], kind="stable")
    return rows[order[:count]]


# ---------------------------------------------------------------------------------------------------------------
# Ground-truth attribute matching (scenes)
# ---------------------------------------------------------------------------------------------------------------

def ground_truth_indicators(attributes: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """N×4 attribute indices (scenes) → N×V 0/1 indicators, one column per attribute value, and their names."""
    from interp_ray.data.scenes import ATTRIBUTE_KINDS, ATTRIBUTE_VALUES

    cols, names = [], []
    for k, kind in enumerate(ATTRIBUTE_KINDS):
        for v, value in enumerate(ATTRIBUTE_VALUES[kind]):
            cols.append((np.asarray(attributes)[:, k] == v).astype(np.float64))
            names.append(f"{kind}={value}")
    return np.stack(cols, 1), names


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``a`` (N×J) with every column of ``b`` (N×V); NaN for constant ones."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(0), b - b.mean(0)
    na, nb = np.sqrt((a * a).sum(0)), np.sqrt((b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a.T @ b) / np.outer(na, nb)


def match_attributes(phi: np.ndarray, indicators: np.ndarray, names: Sequence[str],
                     attribute_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """For each learned attribute, the ground-truth attribute value it tracks best (highest Pearson correlation
    over the rows given), the correlation, and the runner-up. A constant φ_j (a dead attribute) matches nothing."""
    corr = correlation_matrix(phi, indicators)
    rows = []
    for j in range(corr.shape[0]):
        name = attribute_names[j] if attribute_names else f"phi_{j}"
        if not np.isfinite(corr[j]).any():
            rows.append({"attribute": name, "match": None, "corr": None, "second": None, "second_corr": None,
                         "phi_mean": float(np.mean(phi[:, j]))})
            continue
        order = np.argsort(-np.nan_to_num(corr[j], nan=-np.inf))
        rows.append({"attribute": name, "match": names[order[0]], "corr": float(corr[j, order[0]]),
                     "second": names[order[1]], "second_corr": float(corr[j, order[1]]),
                     "phi_mean": float(np.mean(phi[:, j]))})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Activation maximisation with partial initialisation
# ---------------------------------------------------------------------------------------------------------------

def total_variation(x: torch.Tensor) -> torch.Tensor:
    """The code's TV, per image (N,): mean |vertical neighbour difference| + mean |horizontal neighbour difference|."""
    return ((x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean((1, 2, 3))
            + (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean((1, 2, 3)))


def activation_maximisation(model: FlintModel, j: int, init: torch.Tensor | None, settings: AMSection | None = None,
                            *, shape: Sequence[int] | None = None, seed: int = 21) -> torch.Tensor:
    """Maximise C·φ_j(x) − λ_tv TV(x) − λ_bound B(x) − λ_1 mean|x| over x (N×C×H×W), from κ·init (AM+PI) or from
    U(0, 1) noise when ``init`` is None (random-init AM). Adam, ``rounds`` × ``n_iter`` steps, lr × ``lr_decay``
    after each round. Returns the optimised inputs (detached, unclipped)."""
    s = settings or AMSection()
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    if init is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(tuple(shape or (1, *model.predictor.input_shape)), generator=g)
    else:
        x = s.kappa * init.detach().clone().float()
    x = x.to(dev).requires_grad_(True)
    lo, hi = s.bounds
    lr = s.lr
    try:
        with torch.enable_grad():
            for _ in range(s.rounds):
                opt = torch.optim.Adam([x], lr=lr)
                lr *= s.lr_decay
                for _ in range(s.n_iter):
                    opt.zero_grad()
                    phi = model.attributes(x)
                    # Every term per image, then summed: a batch of N runs exactly as N single-image runs (the code
                    # optimises one image at a time; Adam is element-wise, eval mode keeps images independent).
                    bound = (((x > hi) | (x < lo)).float() * x.abs()).mean((1, 2, 3))
                    objective = (s.C * phi[:, j] - s.lambda_l1 * x.abs().mean((1, 2, 3)) - s.lambda_bound * bound
                                 - s.lambda_tv * total_variation(x)).sum()
                    (grad,) = torch.autograd.grad(-objective, [x])
                    x.grad = grad
                    opt.step()
    finally:
        model.train(was)
    return x.detach()


# ---------------------------------------------------------------------------------------------------------------
# Ray-free training
# ---------------------------------------------------------------------------------------------------------------

def load_predictor(cfg: FlintJobConfig, train_ds) -> tuple[Classifier, dict[str, Any], str | None]:
    """The predictor to train (joint/base: built from ``cfg.model``) or to freeze (post-hoc: the checkpoint).

    Returns the module, its model spec ``{"name", "options"}`` and (post-hoc) the checkpoint digest.
    """
    from interp_ray.checkpoint import load_classifier
    from interp_ray.models import build_model

    if cfg.flint.mode == "posthoc":
        loaded = load_classifier(cfg.flint.predictor_checkpoint)
        spec = loaded.config["model"]
        if loaded.model.num_classes != train_ds.num_classes or loaded.model.input_shape != tuple(train_ds.image_shape):
            raise UserError(f"predictor {cfg.flint.predictor_checkpoint} takes {loaded.model.input_shape} with "
                            f"{loaded.model.num_classes} classes; the data is {tuple(train_ds.image_shape)} with "
                            f"{train_ds.num_classes}")
        return loaded.model, {"name": spec["name"], "options": spec.get("options", {})}, loaded.digest
    c, h, _ = train_ds.image_shape
    options = {"num_classes": train_ds.num_classes, "in_channels": c, "image_size": h, **cfg.model.options}
    return build_model(cfg.model.name, **options), {"name": cfg.model.name, "options": options}, None


def load_splits(cfg: FlintJobConfig, splits: Sequence[str] = ("train", "val")) -> list:
    from interp_ray.data import load_dataset

    return [materialize(load_dataset(cfg.data.name, s, **cfg.data.options), cfg.materialize_rows) for s in splits]


@dataclass
class FlintSetup:
    """Everything a training loop needs, built the same way with or without Ray."""

    model: FlintModel
    spec: dict[str, Any]             # resolved FLINT architecture
    predictor_spec: dict[str, Any]   # {"name", "options"} of f
    predictor_digest: str | None
    schedule: ScheduleSection
    train_ds: Any
    val_ds: Any


def setup(cfg: FlintJobConfig) -> FlintSetup:
    from interp_ray.training import seed_everything

    seed_everything(cfg.train.seed)
    train_ds, val_ds = load_splits(cfg)
    predictor, pspec, digest = load_predictor(cfg, train_ds)
    spec = resolved_flint_spec(predictor, cfg.flint)
    return FlintSetup(build_flint(predictor, spec), spec, pspec, digest, cfg.flint.resolved_schedule(), train_ds,
                      val_ds)


def train_local(cfg: FlintJobConfig, *, device: torch.device | str | None = None,
                log=None) -> tuple[FlintSetup, list[dict[str, Any]]]:
    """Train without Ray: the same ``flint_train_epoch`` and sampler as a 1-worker Ray Train run."""
    from interp_ray.training import distributed_sampler, pick_device

    dev = torch.device(device) if device is not None else pick_device(cfg.scaling.use_gpu)
    st = setup(cfg)
    model = st.model.to(dev)
    opt, sched = make_flint_optimizer(model, cfg.train)
    sampler = distributed_sampler(st.train_ds, world_size=1, rank=0, shuffle=True, seed=cfg.train.seed)
    loader, val_loader = st.train_ds.loader(cfg.train.batch_size, sampler=sampler), st.val_ds.loader(512)
    history = []
    for epoch in range(cfg.train.epochs):
        sampler.set_epoch(epoch)
        weights = st.schedule.weights(epoch + 1)
        t0 = time.perf_counter()
        tr = flint_train_epoch(model, loader, opt, dev, weights, recon_loss=st.spec["recon_loss"],
                               max_shift=cfg.train.augment_shift)
        sched.step()
        va = flint_evaluate(model, val_loader, dev, recon_loss=st.spec["recon_loss"], weights=weights)
        row = epoch_row(epoch, 0, tr, va, weights, time.perf_counter() - t0, 1)
        history.append(row)
        if log:
            log(row)
    return st, history


def epoch_row(epoch: int, attempt: int, tr: dict, va: dict, weights: dict, seconds: float,
              world: int) -> dict[str, Any]:
    return {"epoch": epoch, "attempt": attempt, "weights": dict(weights),
            "train_loss": tr["loss"], **{f"train_{t}": tr[t] for t in TERMS},
            "train_accuracy_f": tr["accuracy_f"], "train_fidelity": tr["fidelity"],
            "val_loss": va["loss"], **{f"val_{t}": va[t] for t in TERMS},
            "val_accuracy_f": va["accuracy_f"], "val_accuracy_g": va["accuracy_g"], "val_fidelity": va["fidelity"],
            "epoch_s": seconds, "world_size": world}


def finalize(model: FlintModel, train_ds, section: FlintSection, *, seed: int = 21,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """After training: global relevance (into the model's buffer) and each attribute's maximum-activating samples,
    both on the same random training subset, as the code does. Returns the MAS (indices into ``train_ds`` and
    images, J×l[×C×H×W]) for the checkpoint."""
    rel, idx, data = compute_global_relevance(model, train_ds, samples=section.relevance_samples, seed=seed,
                                              device=device)
    mas_idx = np.stack([idx[max_activating(data["phi"], None, j, count=section.n_mas)]
                        for j in range(model.n_attributes)])  # J×l rows of train_ds
    images = train_ds.get_batch(mas_idx.reshape(-1))["image"]
    mas = images.reshape(*mas_idx.shape, *images.shape[1:])
    extra: dict[str, Any] = {"mas_indices": mas_idx, "mas_images": mas}
    return extra


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

def attribute_names_for(n: int) -> list[str]:
    width = len(str(n - 1))
    return [f"phi_{j:0{width}d}" for j in range(n)]


def save_flint(path, model: FlintModel, *, spec: dict[str, Any], predictor_spec: dict[str, Any],
               class_names: Sequence[str], mode: str, tau: float = 2.0, data: dict | None = None,
               metrics: dict | None = None, predictor_digest: str | None = None,
               mas_images: np.ndarray | None = None, attribute_names: Sequence[str] | None = None,
               attribute_matches: list | None = None, am: dict | None = None) -> str:
    from interp_ray.checkpoint import save_checkpoint

    model = getattr(model, "module", model)
    files = {}
    if mas_images is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, images=np.asarray(mas_images, dtype=np.float32))
        files[MAS_FILE] = buf.getvalue()
    config = {"model": predictor_spec, "flint": spec, "class_names": list(class_names), "mode": mode, "tau": tau,
              "attribute_names": list(attribute_names or attribute_names_for(model.n_attributes)),
              "data": data or {}, "metrics": metrics or {}, "predictor_digest": predictor_digest,
              "attribute_matches": attribute_matches, "am": am}
    return save_checkpoint(path, kind=CHECKPOINT_KIND, config=config, state_dict=model.state_dict(), files=files)


# ---------------------------------------------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------------------------------------------

class FlintParams(BaseModel):
    """Per-request settings of FLINT."""

    model_config = ConfigDict(extra="forbid")

    tau: float | None = Field(None, gt=0, description="relevance threshold 1/τ; default: the checkpoint's τ (2)")
    target: int = Field(-1, ge=-1, description="class to interpret; -1 = the class the interpreter g predicts")


@register("flint")
class FlintExplainer(Explainer):
    """FLINT (Parekh et al., NeurIPS'21): relevant learned attributes of the interpreter g = h∘Ψ for an input."""

    name = "flint"
    needs = frozenset({"image"})   # the checkpoint carries its own predictor
    produces = frozenset({"attributes"})
    learned = True
    Params = FlintParams

    def __init__(self, flint: FlintModel, *, class_names: Sequence[str] | None = None,
                 attribute_names: Sequence[str] | None = None, tau: float = 2.0, config: dict | None = None,
                 mas_images: np.ndarray | None = None):
        self.flint = flint.eval()
        self.model = flint.predictor  # the classifier explained; its input_shape tells callers what to feed
        self.class_names = list(class_names) if class_names else None
        self.attribute_names = list(attribute_names or attribute_names_for(flint.n_attributes))
        self.tau = float(tau)
        self.config = dict(config or {})
        self.mas_images = mas_images

    # -- learned state ------------------------------------------------------------------------------------------
    def fit(self, data: Any = None, **kwargs: Any) -> "FlintExplainer":
        """Train a new FLINT without Ray: ``fit(config=FlintJobConfig | dict)`` (``data`` is ignored; the config
        names the dataset). Replaces this explainer's state with the trained one."""
        cfg = kwargs.get("config")
        cfg = cfg if isinstance(cfg, FlintJobConfig) else FlintJobConfig.model_validate(cfg or {})
        trained = train_explainer(cfg)[0]
        self.__dict__.update(trained.__dict__)
        return self

    def save(self, path: str) -> str:
        return save_flint(path, self.flint, spec=self.config.get("flint", {}),
                          predictor_spec=self.config.get("model", {}), class_names=self.class_names or [],
                          mode=self.config.get("mode", "joint"), tau=self.tau, data=self.config.get("data"),
                          metrics=self.config.get("metrics"), predictor_digest=self.config.get("predictor_digest"),
                          mas_images=self.mas_images, attribute_names=self.attribute_names,
                          attribute_matches=self.config.get("attribute_matches"), am=self.config.get("am"))

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "FlintExplainer":
        from interp_ray.checkpoint import read_checkpoint
        from interp_ray.models import build_model

        ck = read_checkpoint(path, kind=CHECKPOINT_KIND)
        spec = dict(ck.config["flint"])
        predictor = build_model(ck.config["model"]["name"], **ck.config["model"].get("options", {}))
        model = build_flint(predictor, spec)
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as e:
            raise UserError(f"checkpoint {path}: weights do not fit the FLINT model ({str(e).splitlines()[0]})") from None
        mas = None
        if MAS_FILE in ck.files:
            mas = np.load(io.BytesIO(ck.files[MAS_FILE]))["images"]
        device = kwargs.get("device", "cpu")
        return cls(model.to(device).eval(), class_names=ck.config.get("class_names"),
                   attribute_names=ck.config.get("attribute_names"), tau=kwargs.get("tau", ck.config.get("tau", 2.0)),
                   config=ck.config, mas_images=mas)

    # -- interpretation ------------------------------------------------------------------------------------------
    @property
    def weight(self) -> np.ndarray:
        return _weight(self.flint)

    @torch.no_grad()
    def interpret(self, x: torch.Tensor, targets: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Arrays for a batch: phi, f and g probabilities, the interpreted classes, contributions and relevance."""
        from interp_ray.explainers.saliency_utils import eval_mode

        with eval_mode(self.flint):
            out = self.flint(x)
        pf, pg = F.softmax(out.logits, 1).cpu().numpy(), F.softmax(out.interp_logits, 1).cpu().numpy()
        classes = pg.argmax(1)
        if targets is not None:
            bad = targets[(targets < -1) | (targets >= self.flint.num_classes)]
            if bad.size:
                raise UserError(f"target class {int(bad[0])} is out of range; classes are "
                                f"0..{self.flint.num_classes - 1} (or -1 for g's prediction)")
            classes = np.where(targets >= 0, targets, classes)
        phi = out.phi.cpu().numpy()
        alpha = contributions(phi, self.weight, classes)
        return {"phi": phi, "prob_f": pf, "prob_g": pg, "classes": classes, "alpha": alpha, "r": relevance(alpha)}

    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | dict | None = None) -> list[Explanation]:
        from interp_ray.explainers.saliency_utils import prepare_images, row_targets

        p = self.parse_params(params)
        tau = p.tau or self.tau
        x = prepare_images(self.model, batch)
        res = self.interpret(x, row_targets(batch, len(x), p.target))
        grel = self.flint.global_relevance.cpu().numpy()
        out = []
        for i in range(len(x)):
            c = int(res["classes"][i])
            local = local_interpretation(res["r"][i], tau)
            glob = [self.attribute_names[j] for j in np.flatnonzero(grel[c] > 1.0 / tau)] if grel.any() else None
            out.append(Explanation(
                label=c, label_name=self._class_name(c), method=self.name,
                attributes={self.attribute_names[j]: round(v, 6) for j, v in local},
                extra={"tau": tau, "interpreter_class": int(res["prob_g"][i].argmax()),
                       "interpreter_probability": float(res["prob_g"][i].max()),
                       "predictor_class": int(res["prob_f"][i].argmax()),
                       "predictor_class_name": self._class_name(int(res["prob_f"][i].argmax())),
                       "predictor_probability": float(res["prob_f"][i].max()),
                       "agrees": bool(res["prob_g"][i].argmax() == res["prob_f"][i].argmax()),
                       "phi": res["phi"][i].astype(np.float32).tolist(),
                       "relevance": res["r"][i].astype(np.float32).tolist(),
                       "class_attributes": glob,
                       "attribute_labels": self.attribute_labels()}))
        return out

    def am_settings(self, **overrides: Any) -> AMSection:
        """AM+PI settings: the checkpoint's (from the training config's ``pictures.am``), then ``overrides``."""
        return AMSection.model_validate({**(self.config.get("am") or {}), **overrides})

    def _class_name(self, c: int) -> str | None:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else None

    def attribute_labels(self) -> dict[str, str] | None:
        """Ground-truth matches of the attributes (scenes), name → "kind=value (ρ=…)", when the checkpoint has them."""
        matches = self.config.get("attribute_matches")
        if not matches:
            return None
        return {m["attribute"]: f"{m['match']} (rho={m['corr']:.2f})" for m in matches if m.get("match")}

    def global_interpretation(self, tau: float | None = None) -> dict[str, list[tuple[str, float]]]:
        """class name → [(attribute, r_{j,c})] above 1/τ (from the relevance stored at training time)."""
        rel = self.flint.global_relevance.cpu().numpy()
        out: dict[str, list[tuple[str, float]]] = {}
        for c, j, v in global_interpretation(rel, tau or self.tau):
            out.setdefault(self._class_name(c) or str(c), []).append((self.attribute_names[j], v))
        return out


# ---------------------------------------------------------------------------------------------------------------
# End to end without Ray (benchmarks, ``fit``)
# ---------------------------------------------------------------------------------------------------------------

def explainer_from_setup(st: FlintSetup, cfg: FlintJobConfig, extra: dict[str, Any] | None = None,
                         metrics: dict | None = None) -> FlintExplainer:
    extra = extra or {}
    config = {"model": st.predictor_spec, "flint": st.spec, "mode": cfg.flint.mode, "data": cfg.data.model_dump(),
              "metrics": metrics or {}, "predictor_digest": st.predictor_digest,
              "attribute_matches": extra.get("attribute_matches"), "am": cfg.pictures.am.model_dump(mode="json")}
    return FlintExplainer(st.model.cpu().eval(), class_names=st.train_ds.class_names, tau=cfg.flint.tau,
                          config=config, mas_images=extra.get("mas_images"))


def train_explainer(cfg: FlintJobConfig, *, log=None) -> tuple[FlintExplainer, list[dict[str, Any]]]:
    """Train (``train_local``), then compute global relevance and MAS (``finalize``): a ready explainer."""
    st, history = train_local(cfg, log=log)
    st.model.cpu()
    extra = finalize(st.model, st.train_ds, cfg.flint)
    return explainer_from_setup(st, cfg, extra, {"history": history[-1:] if history else []}), history


def evaluate_explainer(explainer: FlintExplainer, ds, *, taus: Sequence[float] = TAUS,
                       batch_size: int = 512) -> dict[str, Any]:
    """Test metrics of a trained FLINT: accuracy of f and g, fidelity, CNS(τ) (both readings)."""
    data = collect(explainer.flint, ds.loader(batch_size))
    return interpretation_metrics(data, explainer.weight, taus)


def scenes_attribute_table(explainer: FlintExplainer, ds, *, batch_size: int = 512) -> list[dict[str, Any]]:
    """Match every learned attribute to the ground-truth attribute value it correlates with best over ``ds``
    (a dataset whose rows carry scenes ``attributes``)."""
    idx = np.arange(len(ds))
    phis, attrs = [], []
    was = explainer.flint.training
    explainer.flint.eval()
    with torch.no_grad():
        for lo in range(0, len(ds), batch_size):
            b = ds.get_batch(idx[lo:lo + batch_size])
            if "attributes" not in b:
                raise UserError(f"dataset {ds.name!r} has no ground-truth attributes")
            phis.append(explainer.flint.attributes(torch.from_numpy(np.ascontiguousarray(b["image"]))).numpy())
            attrs.append(b["attributes"])
    explainer.flint.train(was)
    ind, names = ground_truth_indicators(np.concatenate(attrs))
    return match_attributes(np.concatenate(phis), ind, names, explainer.attribute_names)


def copy_predictor(model: nn.Module) -> nn.Module:
    """A detached deep copy of a predictor (e.g. BASE-f, to freeze it for post-hoc FLINT)."""
    return copy.deepcopy(getattr(model, "module", model)).cpu().eval()
