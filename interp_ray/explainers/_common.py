"""What every saliency explainer shares: input checks, target classes, map normalisation, torchvision layers.

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
# torchvision architectures, as their papers and code read them
# ---------------------------------------------------------------------------------------------------------------


def torchvision_layers(model: Classifier) -> dict[str, str]:
    """Named layers of a torchvision VGG or ResNet (the methods' papers name these): VGG ``pool5`` (the last max pool)
    and ``conv5_relu`` (the ReLU before it); ResNet ``layer4``, ``layer4_penultimate`` (its next-to-last block) and
    ``layer4_first`` (its first block). Empty for any other model."""
    import torchvision.models as tvm

    net = getattr(model, "net", model)
    if isinstance(net, tvm.VGG):
        pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
        last_relu = max(i for i, m in enumerate(net.features[:pools[-1]]) if isinstance(m, nn.ReLU))
        return {"pool5": f"features.{pools[-1]}", "conv5_relu": f"features.{last_relu}"}
    if isinstance(net, tvm.ResNet):
        return {"layer4": "layer4", "layer4_penultimate": f"layer4.{len(net.layer4) - 2}", "layer4_first": "layer4.0"}
    return {}


def resolve_one_layer(model: Classifier, name: str) -> str:
    """The module path of exactly one layer (UnknownLayerError, a UserError, for an unknown name)."""
    names = model.resolve_layers(name)
    if len(names) != 1:
        raise UserError(f"layer {name!r} matches {len(names)} layers ({', '.join(names[:5])}…); name exactly one")
    return names[0]


def get_module(model: Classifier, name: str) -> nn.Module:
    return dict(model.net.named_modules())[resolve_one_layer(model, name)]
