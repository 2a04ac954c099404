"""Classifiers with named taps.

``Classifier`` wraps any ``nn.Module`` and adds ``activations(x, layers)``: the outputs of the named sub-modules,
captured by forward hooks that are always removed before the call returns (even when the forward raises), so a
model never carries a stale hook into training or serving. Layer names are the module paths of ``named_modules()``
and may be given as shell-style patterns (``"conv*"``, ``"layer4.*"``); they are resolved against the model once,
and an unknown name fails at once with the list of valid names.

``"input"`` (``INPUT_LAYER``) names the model's input itself, as if it were a layer: an explainer that learns to
reconstruct the input from hidden layers (FLINT's decoder) then reads input and layers from the same activation store
row, and nothing but the extraction runs the model.

Input normalisation (``mean``/``std`` per channel) happens inside ``forward``: every path that runs the classifier
(extraction, the explainers' gradients, serving) feeds pixels in [0, 1] and sees the same normalised input, so none
of them can forget it or apply it twice. The constants are non-persistent buffers: they follow ``.to(device)`` but
stay out of the state dict (the checkpoint records them among the model's options).
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.models.roles import find_roles


class UnknownLayerError(UserError):
    pass


# The model's input, tappable as a layer (named explicitly only: a pattern such as "*" does not match it).
INPUT_LAYER = "input"


class Classifier(nn.Module):
    """``forward(x) -> logits`` plus ``activations(x, layers) -> {name: tensor}``."""

    def __init__(self, net: nn.Module, *, num_classes: int, in_channels: int, image_size: int,
                 default_layers: Iterable[str] = (), arch: str | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.default_layers = list(default_layers)
        if self.default_layers:
            self.resolve_layers(self.default_layers)
        # The registry name the model was built from (None for a user's own model): a method may keep settings
        # for a registered architecture under this name, in its own folder; the model never names a method.
        self.arch = arch
        self.set_normalisation(mean, std)

    def set_normalisation(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Normalise inputs as ``(x - mean) / std`` per channel inside ``forward`` (None for both: pixels as given).

        One value applies to every channel; otherwise one per channel. A zero or negative std is refused."""
        if mean is None and std is None:
            self.register_buffer("input_mean", None, persistent=False)
            self.register_buffer("input_std", None, persistent=False)
            return
        m = _per_channel(mean if mean is not None else [0.0], self.in_channels, "mean")
        s = _per_channel(std if std is not None else [1.0], self.in_channels, "std")
        if min(s) <= 0:
            raise UserError(f"std must be positive for every channel, got {s}")
        self.register_buffer("input_mean", torch.tensor(m).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(s).view(1, -1, 1, 1), persistent=False)

    @property
    def normalisation(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` as applied in ``forward``, or None."""
        if self.input_mean is None:
            return None
        return {"mean": self.input_mean.flatten().tolist(), "std": self.input_std.flatten().tolist()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mean is not None:
            x = (x - self.input_mean) / self.input_std
        return self.net(x)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def roles(self) -> dict[str, list[str]]:
        """Layers by role (``interp_ray.models.roles``), found by one probe at ``input_shape`` and kept."""
        if getattr(self, "_roles", None) is None:
            self._roles = find_roles(self)
        return self._roles

    def layer_names(self) -> list[str]:
        """Every tappable module path (the root excluded), in definition order."""
        return [name for name, _ in self.net.named_modules() if name]

    def resolve_layers(self, layers: Iterable[str] | str) -> list[str]:
        """Expand names/patterns to module paths, keeping order and dropping repeats.

        A pattern that matches nothing raises ``UnknownLayerError`` naming the valid layers.
        """
        if isinstance(layers, str):
            layers = [layers]
        valid = self.layer_names()
        out: list[str] = []
        for pattern in layers:
            hits = [pattern] if pattern in valid or pattern == INPUT_LAYER else fnmatch.filter(valid, pattern)
            if not hits:
                raise UnknownLayerError(f"unknown layer {pattern!r}; valid: {', '.join(valid)} "
                                        f"(and {INPUT_LAYER!r}, the input itself)")
            out.extend(h for h in hits if h not in out)
        return out

    def activations(self, x: torch.Tensor, layers: Iterable[str] | str, *,
                    with_logits: bool = False) -> dict[str, torch.Tensor]:
        """Run ``x`` through the model and return the outputs of ``layers`` (plus ``"logits"`` when asked)."""
        names = self.resolve_layers(layers)
        modules = dict(self.net.named_modules())
        wants_input = INPUT_LAYER in names and INPUT_LAYER not in modules
        captured: dict[str, torch.Tensor] = {INPUT_LAYER: x} if wants_input else {}
        handles = []
        try:
            for name in names:
                if name not in modules:   # the input: captured above
                    continue
                handles.append(modules[name].register_forward_hook(_capture(captured, name)))
            logits = self.forward(x)
        finally:
            for h in handles:
                h.remove()
        out = {name: captured[name] for name in names}
        if with_logits:
            out["logits"] = logits
        return out

    def check_input(self, x: torch.Tensor) -> None:
        """Fail clearly on an input the model cannot take (wrong rank, channels or size)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            takes = "×".join(map(str, self.input_shape))
            raise UserError(f"input has shape {tuple(x.shape)}; this model takes N×{takes}")


def _per_channel(values: Sequence[float] | float, channels: int, what: str) -> list[float]:
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise UserError(f"{what} has {len(vals)} values; the model takes {channels} channel(s): give one or {channels}")
    return vals


def _capture(store: dict[str, torch.Tensor], name: str):
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):  # e.g. an LSTM; the first element is the sequence output
            output = output[0]
        store[name] = output

    return hook
