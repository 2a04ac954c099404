"""Fidelity of a black-box local explainer (LIME) to a classifier, measured as FLINT's paper measures it.

Fidelity is the share of images on which the explainer's own prediction names the class f predicts. For FLINT that
prediction is g's argmax. For LIME (Ribeiro et al. 2016, the ``lime`` package) it is the local surrogate's: LIME
fits one weighted ridge regression per class on the superpixel on/off vectors of perturbed copies of the image
(the per-class probabilities of f as targets), and the surrogate's prediction for a class at the image itself (every
superpixel on) is its intercept plus the sum of its coefficients. LIME's class is the argmax of those over all
classes. ``lime``'s own ``local_pred`` is kept for the last fitted class only, hence the sum here; with every
superpixel used as a feature (``num_features`` ≥ their count) the two agree (tested).

``lime_predictions`` is that dense, in-sample reading. FLINT's Table 1 (LIME 67.3% on FashionMNIST) was measured
under a restricted protocol, most likely the one of VIBI's public comparison code (PAPERS.md §3): ``chunk_lime``
below runs it — grid chunks as the features, the k highest-weighted kept, a multinomial logistic-regression surrogate
on those k, and two fidelities (approximator and rationale).

Segmentation (dense reading): quickshift with ``kernel_size=1, max_dist=200, ratio=0.2``, the settings of LIME's own
MNIST tutorial (its default kernel_size 4 gives one or two segments on a 28×28 image); hidden superpixels are set to 0
(black, the background of MNIST and Fashion-MNIST), as in that tutorial.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from interp_ray.errors import UserError

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


@dataclass(frozen=True)
class ChunkLimeSettings:
    """LIME as VIBI's comparison code runs it (``SeojinBang/VIBI``, ``compare/lime_.py``; PAPERS.md §3): the image cut
    into a grid of ``chunk_size``×``chunk_size`` chunks (the features), ``num_samples`` perturbations, hidden chunks
    set to ``hide_color``, ``k`` features kept by ``highest_weights`` (LIME's ridge on f's predicted class), then a
    multinomial logistic-regression surrogate fitted on those k."""

    k: int = 4
    chunk_size: int = 2
    num_samples: int = 1000
    hide_color: float = 0.0
    kernel_width: float = 0.25   # lime_image's default, on the cosine distance to the image
    batch_size: int = 1000


@dataclass
class ChunkLimeResult:
    """Per image: f's class, the surrogate's class at the image (approximator) and f's class on the image with only
    the k chosen chunks kept (rationale), and the k chunks (row-major over the grid)."""

    f_class: np.ndarray
    approximator_class: np.ndarray
    rationale_class: np.ndarray
    chunks: np.ndarray

    @property
    def approximator_fidelity(self) -> float:
        return float((self.approximator_class == self.f_class).mean())

    @property
    def rationale_fidelity(self) -> float:
        return float((self.rationale_class == self.f_class).mean())


def chunk_masks(on: np.ndarray, shape: tuple[int, int], chunk_size: int) -> np.ndarray:
    """N×D chunk on/off vectors → N×H×W pixel masks (a chunk covers chunk_size² pixels, row-major grid)."""
    h, w = shape
    gh, gw = h // chunk_size, w // chunk_size
    grid = on.reshape(len(on), gh, gw).astype(np.float32)
    return np.repeat(np.repeat(grid, chunk_size, axis=1), chunk_size, axis=2)


def _lime_weights(data: np.ndarray, kernel_width: float) -> np.ndarray:
    """lime_image's sample weights: sqrt(exp(−d²/width²)), d the cosine distance to the unperturbed row."""
    ref = data[0]
    norms = np.linalg.norm(data, axis=1) * np.linalg.norm(ref)
    cos = np.divide(data @ ref, norms, out=np.zeros(len(data)), where=norms > 0)
    d = 1.0 - cos
    return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))


def chunk_lime_one(predict_proba: ProbaFn, image: np.ndarray, settings: ChunkLimeSettings, rng: np.random.Generator
                   ) -> tuple[int, int, int, np.ndarray]:
    """One C×H×W image: (f's class, the surrogate's class, the rationale's class, the k chunks)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    c, h, w = image.shape
    cs = settings.chunk_size
    if h % cs or w % cs:
        raise UserError(f"chunk_size {cs} must divide the image sides ({h}×{w})")
    n_features = (h // cs) * (w // cs)
    if not 0 < settings.k <= n_features:
        raise UserError(f"k: {settings.k} chunks asked of a grid of {n_features}")
    # lime_image's sampling: every chunk on or off with probability ½, the first row the image itself
    data = rng.integers(0, 2, size=(settings.num_samples, n_features))
    data[0] = 1
    masks = chunk_masks(data, (h, w), cs)[:, None]
    perturbed = (image[None] * masks + settings.hide_color * (1 - masks)).astype(np.float32)
    proba = np.concatenate([predict_proba(perturbed[lo:lo + settings.batch_size])
                            for lo in range(0, len(perturbed), settings.batch_size)])
    f_class = int(proba[0].argmax())
    weights = _lime_weights(data.astype(np.float64), settings.kernel_width)
    # feature_selection='highest_weights': ridge on f's probability of its class, the k largest |coefficients|
    ridge = Ridge(alpha=0.01, fit_intercept=True).fit(data, proba[:, f_class], sample_weight=weights)
    chosen = np.sort(np.argsort(-np.abs(ridge.coef_), kind="stable")[:settings.k])
    classes = proba.argmax(1)
    x_sel = data[:, chosen]
    if len(np.unique(classes)) == 1:   # every perturbation gives one class: the surrogate can only say that class
        approx = int(classes[0])
    else:
        surrogate = LogisticRegression(max_iter=1000).fit(x_sel, classes, sample_weight=weights)
        approx = int(surrogate.predict(np.ones((1, settings.k)))[0])
    keep = np.zeros((1, n_features), dtype=np.int64)
    keep[0, chosen] = 1
    kept = chunk_masks(keep, (h, w), cs)[:, None]
    rationale = (image[None] * kept + settings.hide_color * (1 - kept)).astype(np.float32)
    return f_class, approx, int(predict_proba(rationale)[0].argmax()), chosen


def chunk_lime(predict_proba: ProbaFn, images: np.ndarray, *, settings: ChunkLimeSettings = ChunkLimeSettings(),
               seed: int = 0) -> ChunkLimeResult:
    """LIME under VIBI's comparison protocol on N×C×H×W ``images`` (seed ``seed + i`` for image i)."""
    out = [chunk_lime_one(predict_proba, np.asarray(img, dtype=np.float32), settings,
                          np.random.default_rng(seed + i)) for i, img in enumerate(images)]
    return ChunkLimeResult(f_class=np.array([o[0] for o in out]), approximator_class=np.array([o[1] for o in out]),
                           rationale_class=np.array([o[2] for o in out]), chunks=np.stack([o[3] for o in out]))
