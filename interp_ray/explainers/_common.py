"""What every saliency explainer shares: input checks, target classes, map normalisation, default layers.

Kept apart from the methods so GFI, Grad-CAM, gradient and occlusion validate a request the same way and fail with
the same ``UserError`` messages (a serving client sees one contract, whichever method it calls).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp_ray.errors import UserError
from interp_ray.models import Classifier

PREDICTED = -1  # a target of -1 means "the class the model predicts"


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode and restore the caller's mode afterwards.

    Eval mode is required, not cosmetic: BatchNorm in train mode mixes the statistics of every image of a batch, so
    one image's explanation would depend on its batch neighbours (and dropout would make it random).
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def prepare_images(model: Classifier, batch: dict) -> torch.Tensor:
    """``batch["image"]`` as a float32 tensor on the model's device, checked against the model's input shape."""
    if "image" not in batch:
        raise UserError(f"batch has no 'image' column; it has {', '.join(sorted(batch)) or 'nothing'}")
    image = batch["image"]
    x = image.detach() if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
    if not (x.dtype.is_floating_point or x.dtype == torch.uint8):
        raise UserError(f"images must be float in [0, 1] (or uint8), got dtype {x.dtype}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    model.check_input(x)
    if len(x) and not torch.isfinite(x).all():
        raise UserError("images contain NaN or infinite values")
    return x.to(model_device(model))


def row_targets(batch: dict, n: int, default: int | None = None) -> np.ndarray:
    """int64 (n,): ``batch["target"]`` where given and not -1, else ``default`` (when set), else -1 (= predicted).
    Other negative values are kept, so ``resolve_targets`` reports them as out of range."""
    fallback = PREDICTED if default is None else int(default)
    raw = batch.get("target")
    if raw is None:
        return np.full(n, fallback, dtype=np.int64)
    t = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw)
    if t.ndim == 0:
        t = np.full(n, t)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
        raise UserError(f"target must be {n} integers (one per image, -1 = predicted), got {t.dtype} {t.shape}")
    return np.where(t == PREDICTED, fallback, t).astype(np.int64)


def resolve_targets(model: Classifier, x: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
    """Long tensor (N,) of classes; -1 rows become the model's prediction. Out-of-range classes raise UserError."""
    bad = targets[(targets < PREDICTED) | (targets >= model.num_classes)]
    if bad.size:
        raise UserError(f"target class {int(bad[0])} is out of range; this model has classes 0..{model.num_classes - 1}"
                        " (or -1 for the predicted class)")
    out = torch.as_tensor(targets, dtype=torch.long, device=x.device)
    predicted = out < 0
    if predicted.any():
        with torch.no_grad(), eval_mode(model):
            out = torch.where(predicted, model(x).argmax(1), out)
    return out


def normalise_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max each N×H×W map to [0, 1]; a constant map (no evidence anywhere) becomes all zeros."""
    flat = maps.reshape(len(maps), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def upsample_maps(maps: torch.Tensor, size: Sequence[int], *, align_corners: bool = False) -> torch.Tensor:
    """Bilinear N×h×w → N×H×W."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=align_corners)[:, 0]


# ---------------------------------------------------------------------------------------------------------------
# Default layers per architecture
# ---------------------------------------------------------------------------------------------------------------
# The registry's classifiers are recognised by structure (a Classifier does not carry its registry name). The
# choices follow Du et al. (KDD'18): l0 = the last pooling layer before the classifier head, l1 = the last
# convolutional feature map (VGG-19: pool5 / conv5_4; ResNet-18: "pool5" = layer4 / the next-to-last block).


def default_layers(model: Classifier) -> dict:
    """``{"inversion": l0, "base": l1, "gradcam": layer}`` (plus ``blur_sigma`` where the paper's blur does not suit
    the data), as the model declares them (``explainer_defaults``, set in ``interp_ray.models.zoo``), else a
    UserError asking for the layer names."""
    declared = getattr(model, "explainer_defaults", {})
    fi, cam = declared.get("feature_inversion") or {}, declared.get("gradcam") or {}
    if not fi or not cam:
        raise UserError("this model declares no default layers for the saliency methods; pass the layer names "
                        f"explicitly (valid: {', '.join(model.layer_names())})")
    out = {"inversion": fi["inversion_layer"], "base": fi["base_layer"], "gradcam": cam["layer"]}
    if "blur_sigma" in fi:
        out["blur_sigma"] = fi["blur_sigma"]
    return out


def resolve_one_layer(model: Classifier, name: str) -> str:
    """The module path of exactly one layer (UnknownLayerError, a UserError, for an unknown name)."""
    names = model.resolve_layers(name)
    if len(names) != 1:
        raise UserError(f"layer {name!r} matches {len(names)} layers ({', '.join(names[:5])}…); name exactly one")
    return names[0]


def get_module(model: Classifier, name: str) -> nn.Module:
    return dict(model.net.named_modules())[resolve_one_layer(model, name)]
