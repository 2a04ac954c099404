"""FLINT's networks (Parekh et al., NeurIPS 2021), as the authors' ``networks.py`` builds them:

* Φ(x) = Ψ(f_I(x)) ∈ R^J: J "attribute functions" fed by hidden layers I of f (``AttributeFunctions``);
* h: Dropout(0.01) → Linear(J → C), g(x) = softmax(h(Φ(x))) (``Interpreter``);
* d: a decoder reconstructing x from Φ (``Decoder``);
* f, Ψ, h, d in one module (``FlintModel``), sized from the predictor by ``build_flint``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers.flint.config import FlintSection
from interp_ray.explainers.flint.defaults import architecture_defaults
from interp_ray.models import Classifier
from interp_ray.models.roles import layers_for_role


class FlintOutput(NamedTuple):
    logits: torch.Tensor         # f(x), N×C
    phi: torch.Tensor            # Φ(x), N×J
    interp_logits: torch.Tensor  # h(Φ(x)), N×C (g = softmax of these)
    recon: torch.Tensor          # d(Φ(x)), N×C×H×W


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

    def forward(self, x: torch.Tensor | None = None, *, taps: Mapping[str, torch.Tensor] | None = None
                ) -> FlintOutput:
        """Ψ, h and d over f's taps of ``x``; or, post hoc, over ``taps`` already computed (f's layers and
        ``"logits"``, read from the activation store), so f does not run at all."""
        if taps is None:
            if x is None:
                raise ValueError("FlintModel needs x or taps")
            taps = self.taps(x)
        elif not self.frozen:
            raise UserError("only post-hoc FLINT (f frozen) reads f's taps from the store; joint FLINT trains f")
        phi = self.psi([taps[name] for name in self.layers])
        return FlintOutput(taps["logits"], phi, self.interpreter(phi), self.decoder(phi))

    def attributes(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x) alone (no decoder, no interpreter); differentiable in x (used by AM+PI)."""
        t = self.predictor.activations(x, self.layers)
        return self.psi([t[name] for name in self.layers])


# One step's input: (x, y, f's taps or None). None runs f on x; post hoc, the taps (f's layers and "logits") come
# from the activation store and f does not run.
Step = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]


def image_steps(loader, max_shift: int = 0):
    """A loader of (images, labels) as steps: f runs on each image (shifted by up to ``max_shift`` pixels)."""
    from interp_ray.training import random_shift

    for images, labels in loader:
        yield random_shift(images, max_shift), labels, None


def forward_step(model: nn.Module, x: torch.Tensor, taps: Mapping[str, torch.Tensor] | None, device) -> FlintOutput:
    """``model`` (a FlintModel, maybe DDP-wrapped: called, not reached into) on one step: over x, or over the taps."""
    if taps is None:
        return model(x)
    return model(taps={k: v.to(device, non_blocking=True) for k, v in taps.items()})


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------

def default_architecture(predictor: Classifier, layers: Sequence[str] | None = None) -> dict[str, Any]:
    """Taps, Ψ activation and decoder for ``predictor`` (``flint.defaults``: kept per registered architecture, else
    from the predictor's layer roles). With ``layers`` named by the user, no role is looked for: a model without
    spatial maps can still be read at the layers the user chose."""
    def role_layers(model, role):
        if layers:
            return list(layers)
        try:
            return layers_for_role(model, role)
        except UserError as e:
            raise UserError(f"flint cannot explain this model: {e}; or name its layers in flint.layers") from None

    return architecture_defaults(predictor, role_layers)


def resolved_flint_spec(predictor: Classifier, section: FlintSection) -> dict[str, Any]:
    """The architecture actually built: the section's values, defaults filled from ``default_architecture``; a
    named layer the predictor does not have is one line naming ``flint.layers``."""
    arch = default_architecture(predictor, section.layers)
    layers = section.layers or arch["layers"]
    if not layers:
        raise UserError("no default FLINT layers for this predictor; set flint.layers "
                        f"(valid: {', '.join(predictor.layer_names())})")
    try:
        resolved = predictor.resolve_layers(layers)
    except UserError as e:   # the same kind (an unknown layer stays an UnknownLayerError), said with the key to fix
        raise type(e)(f"flint: flint.layers: {e}; `interp-ray layers CHECKPOINT` lists them with their shapes"
                      ) from None
    return {"layers": resolved, "n_attributes": section.n_attributes,
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


def copy_predictor(model: nn.Module) -> nn.Module:
    """A detached deep copy of a predictor (e.g. BASE-f, to freeze it for post-hoc FLINT)."""
    return copy.deepcopy(getattr(model, "module", model)).cpu().eval()
