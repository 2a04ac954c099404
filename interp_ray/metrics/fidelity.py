"""Fidelity of a black-box local explainer (LIME) to a classifier, measured as FLINT's paper measures it.

Fidelity is the share of images on which the explainer's own prediction names the class f predicts. For FLINT that
prediction is g's argmax. For LIME (Ribeiro et al. 2016, the ``lime`` package) it is the local surrogate's: LIME
fits one weighted ridge regression per class on the superpixel on/off vectors of perturbed copies of the image
(the per-class probabilities of f as targets), and the surrogate's prediction for a class at the image itself (every
superpixel on) is its intercept plus the sum of its coefficients. LIME's class is the argmax of those over all
classes. ``lime``'s own ``local_pred`` is kept for the last fitted class only, hence the sum here; with every
superpixel used as a feature (``num_features`` ≥ their count) the two agree (tested).

Segmentation: quickshift with ``kernel_size=1, max_dist=200, ratio=0.2``, the settings of LIME's own MNIST tutorial
(its default kernel_size 4 gives one or two segments on a 28×28 image); hidden superpixels are set to 0 (black, the
background of MNIST and Fashion-MNIST), as in that tutorial.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

ProbaFn = Callable[[np.ndarray], np.ndarray]   # N×C×H×W float images in [0, 1] → N×K class probabilities


@dataclass(frozen=True)
class LimeSettings:
    num_samples: int = 1000        # LIME's default
    kernel_size: float = 1.0
    max_dist: float = 200.0
    ratio: float = 0.2
    hide_color: float = 0.0
    batch_size: int = 500


def _rgb_classifier(predict_proba: ProbaFn, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    """LIME hands N×H×W×3 RGB arrays (a grey image is stacked to RGB); the model takes N×C×H×W."""
    def fn(rgb: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.transpose(rgb, (0, 3, 1, 2)), dtype=np.float32)
        return predict_proba(x[:, :1] if channels == 1 else x)

    return fn


@contextlib.contextmanager
def _no_lime_bar(module):
    """``lime_image`` draws a tqdm bar per image over its perturbation batches (no option turns it off, and tqdm's
    TQDM_DISABLE is read when tqdm is imported, which Ray did long before): a thousand images would print a
    thousand bars. Swap the module's ``tqdm`` for the identity while one image is explained."""
    saved = module.tqdm
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = saved


def lime_surrogate_scores(predict_proba: ProbaFn, image: np.ndarray, num_classes: int, *,
                          settings: LimeSettings = LimeSettings(), seed: int = 0):
    """LIME on one C×H×W image: (the surrogate's per-class prediction at the image, the ``lime`` explanation)."""
    from lime import lime_image
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    c = image.shape[0]
    hwc = np.transpose(image, (1, 2, 0)).astype(np.float64)
    rgb = np.repeat(hwc, 3, axis=2) if c == 1 else hwc
    segmenter = SegmentationAlgorithm("quickshift", kernel_size=settings.kernel_size, max_dist=settings.max_dist,
                                      ratio=settings.ratio, random_seed=seed)
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    with _no_lime_bar(lime_image):
        exp = explainer.explain_instance(rgb, _rgb_classifier(predict_proba, c), labels=tuple(range(num_classes)),
                                         top_labels=None, hide_color=settings.hide_color, num_features=100_000,
                                         num_samples=settings.num_samples, batch_size=settings.batch_size,
                                         segmentation_fn=segmenter, random_seed=seed)
    scores = np.array([exp.intercept[k] + sum(w for _, w in exp.local_exp[k]) for k in range(num_classes)])
    return scores, exp


def lime_predictions(predict_proba: ProbaFn, images: np.ndarray, num_classes: int, *,
                     settings: LimeSettings = LimeSettings(), seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """LIME's class for each image of N×C×H×W ``images`` (seed ``seed + i`` for image i, so a subset reproduces)."""
    out = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        scores, _ = lime_surrogate_scores(predict_proba, image, num_classes, settings=settings, seed=seed + i)
        out[i] = int(np.argmax(scores))
        if progress:
            progress(i + 1)
    return out


def torch_proba(model, batch_size: int = 1000) -> ProbaFn:
    """``predict_proba`` of a torch classifier (logits → softmax), in eval mode, without gradients."""
    import torch

    model.eval()

    def fn(x: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for lo in range(0, len(x), batch_size):
                outs.append(torch.softmax(model(torch.from_numpy(x[lo:lo + batch_size])), dim=1).numpy())
        return np.concatenate(outs).astype(np.float64)

    return fn
