"""Which layers guided feature inversion reads of a classifier: l0 (inverted) and l1 (whose channels are weighted).

The paper (Du et al., KDD'18): l0 = the last pooling layer before the classifier head, l1 = the last convolutional
feature map (VGG-19: pool5 / conv5_4; ResNet: layer4 / its next-to-last block). Any other model: its ``last_maps``
role, the last two spatial levels (l1 the earlier, larger one; l0 the later one).
"""

from __future__ import annotations

from typing import Any

from interp_ray.explainers._common import torchvision_layers

# The registry's small CNNs. digits_cnn and flint_mnist (relu2: the last conv map; pool: the block after pooling):
# l0 = pool, l1 = relu2; blur σ = 2 px on 8×8 / 28×28 inputs.
# scenes_cnn (64×64 input, relu3 16×16×4w, relu4 8×8×8w, then global pooling): l1 = relu3 (16×16) rather than relu4
# (8×8): an object of the scenes is 10–20 px wide, and an 8×8 grid puts a whole object into one or two cells. GAP
# (1×1) keeps no layout to invert, so l0 = relu4, the last map with spatial extent — the role pool5 (7×7) plays in
# VGG. Chosen on the val split (docs/saliency.md). Blur σ = 8 px: with the paper's blur scaled to 64 px (σ ≈ 3) the
# blurred scene alone is still classified correctly 20% of the time (the objects are small blobs of one colour), and
# then stage 2 has nothing to find; at σ = 8 the blurred image is at chance (8.7% vs 8.3%).
_SMALL_CNN = {"inversion_layer": "pool", "base_layer": "relu2", "blur_sigma": 2.0}
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits_cnn": _SMALL_CNN,
    "flint_mnist": _SMALL_CNN,
    "scenes_cnn": {"inversion_layer": "relu4", "base_layer": "relu3", "blur_sigma": 8.0},
}


def layer_defaults(method: Any, model: Any) -> dict[str, Any]:
    """``{"inversion_layer", "base_layer"[, "blur_sigma"]}`` for ``model`` (a ``Classifier``); ``method`` is the
    explainer class, whose ``role_layers`` refuses a model without spatial maps in one line."""
    declared = ARCH_DEFAULTS.get(getattr(model, "arch", None))
    if declared:
        return dict(declared)
    tv = torchvision_layers(model)
    if "pool5" in tv:
        return {"inversion_layer": tv["pool5"], "base_layer": tv["conv5_relu"]}
    if "layer4" in tv:
        return {"inversion_layer": tv["layer4"], "base_layer": tv["layer4_penultimate"]}
    maps = method.role_layers(model, "last_maps")
    return {"inversion_layer": maps[-1], "base_layer": maps[0]}
