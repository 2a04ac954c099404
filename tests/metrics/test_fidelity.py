"""LIME's local-surrogate class, as FLINT's fidelity comparison reads it, on a classifier whose reasons are known."""

import numpy as np

from interp_ray.metrics.fidelity import LimeSettings, lime_predictions, lime_surrogate_scores

FAST = LimeSettings(num_samples=300)


def left_right(x: np.ndarray) -> np.ndarray:
    """Three classes from where the ink is: left half (0), right half (1), or none (2); N×1×H×W → N×3."""
    w = x.shape[-1]
    left, right = x[..., : w // 2].mean(axis=(1, 2, 3)), x[..., w // 2:].mean(axis=(1, 2, 3))
    logits = np.stack([12 * left, 12 * right, np.full_like(left, 0.6)], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def blob_image(side: str) -> np.ndarray:
    img = np.zeros((1, 28, 28), dtype=np.float32)
    cols = slice(3, 11) if side == "left" else slice(17, 25)
    img[0, 8:20, cols] = 1.0
    return img


def test_per_class_scores_match_limes_own_local_prediction():
    """lime keeps local_pred for the last class it fitted: our intercept + Σ coefficients must equal it."""
    scores, exp = lime_surrogate_scores(left_right, blob_image("left"), 3, settings=FAST, seed=0)
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores[2], np.ravel(exp.local_pred)[0], rtol=1e-6, atol=1e-9)
    assert len(np.unique(exp.segments)) > 2  # the tutorial segmentation splits a 28×28 image into several parts


def test_surrogate_names_the_class_the_model_predicts():
    images = np.stack([blob_image("left"), blob_image("right"), blob_image("left"), blob_image("right")])
    f = left_right(images).argmax(1)
    assert f.tolist() == [0, 1, 0, 1]
    pred = lime_predictions(left_right, images, 3, settings=FAST, seed=0)
    assert pred.tolist() == f.tolist()


def test_a_fixed_seed_reproduces():
    images = np.stack([blob_image("left"), blob_image("right")])
    a = lime_surrogate_scores(left_right, images[0], 3, settings=FAST, seed=3)[0]
    b = lime_surrogate_scores(left_right, images[0], 3, settings=FAST, seed=3)[0]
    np.testing.assert_array_equal(a, b)
