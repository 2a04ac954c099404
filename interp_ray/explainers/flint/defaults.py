"""FLINT's architecture for a predictor when the config names none: which layers Ψ reads, its activation, the decoder.

Kept per registered architecture (``Classifier.arch``) and for a torchvision ResNet as the FLINT code builds them;
any other predictor: Ψ on both of its ``last_maps`` (the role in ``interp_ray.models.roles``: the last module of each
of the last two spatial resolutions), as the FLINT code's ResNet-18 reads ``layer3`` and ``layer4``'s first block.
"""

from __future__ import annotations

from typing import Any

from interp_ray.explainers._common import torchvision_layers

# digits_cnn: Ψ on the conv block after pooling (2w×4×4), as the MNIST net's 32×14×14 feature block.
# flint_mnist (the code's MNIST setting): Ψ = attr_MNIST (conv 64 + LeakyReLU) on the feature block after the last
# ReLU; d = decode_MNIST, FC(J→2·7·7) → ConvT(2→8)+ReLU → ConvT(8→1)+ReLU.
# scenes_cnn: Ψ on relu3 and relu4 (the two last conv maps, sizes 2:1), the RN18-multi pattern.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits_cnn": {"layers": ["pool"], "psi_activation": "leaky_relu", "decoder": "convt",
                   "decoder_channels": [8, 16]},
    "flint_mnist": {"layers": ["relu2"], "psi_activation": "leaky_relu", "decoder": "convt",
                    "decoder_channels": [2, 8]},
    "scenes_cnn": {"layers": ["relu3", "relu4"], "psi_activation": "relu", "decoder": "convt",
                   "decoder_channels": [10, 24]},
}


def architecture_defaults(predictor: Any, role_layers: Any) -> dict[str, Any]:
    """``{"layers", "psi_activation", "decoder", "decoder_channels"}`` for ``predictor`` (a ``Classifier``);
    ``role_layers(model, role)`` finds a role's layers (one UserError line when the model has none)."""
    declared = ARCH_DEFAULTS.get(getattr(predictor, "arch", None))
    if declared:
        return {k: list(v) if isinstance(v, list) else v for k, v in declared.items()}
    tv = torchvision_layers(predictor)
    if "layer4" in tv:  # the FLINT code's ResNet-18: layer3 and layer4's first block, an upsampling decoder
        return {"layers": ["layer3", tv["layer4_first"]], "psi_activation": "relu", "decoder": "upsample",
                "decoder_channels": [128, 128, 128, 64]}
    return {"layers": role_layers(predictor, "last_maps"), "psi_activation": "leaky_relu",
            "decoder": "convt" if predictor.image_size % 4 == 0 else "upsample", "decoder_channels": [8, 16]}
