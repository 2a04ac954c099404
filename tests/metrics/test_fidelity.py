"""LIME's local-surrogate class, as FLINT's fidelity comparison reads it, on a classifier whose reasons are known."""

import numpy as np
import pytest

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


# --- LIME under VIBI's comparison protocol (grid chunks, k kept, two fidelities) ---------------------------------

def _one_chunk_model(row: int, col: int, size: int = 2):
    """f's class is 1 exactly when the chunk at (row, col) is bright, whatever the other pixels are."""
    def proba(x: np.ndarray) -> np.ndarray:
        v = x[:, 0, row * size:(row + 1) * size, col * size:(col + 1) * size].mean(axis=(1, 2))
        p1 = 1.0 / (1.0 + np.exp(-20 * (v - 0.5)))
        return np.stack([1 - p1, p1], axis=1)

    return proba


def test_chunk_lime_finds_the_one_chunk_the_model_reads():
    from interp_ray.metrics.fidelity import ChunkLimeSettings, chunk_lime

    images = np.ones((3, 1, 8, 8), dtype=np.float32)
    res = chunk_lime(_one_chunk_model(1, 2), images, settings=ChunkLimeSettings(k=1, chunk_size=2, num_samples=300))
    assert (res.chunks[:, 0] == 1 * 4 + 2).all()          # row-major index of chunk (1, 2) in the 4×4 grid
    assert (res.f_class == 1).all()
    assert res.approximator_fidelity == 1.0 and res.rationale_fidelity == 1.0


def test_chunk_lime_rationale_fails_when_k_chunks_cannot_carry_the_class():
    """f says 1 only when the whole image is bright: one kept chunk (the rest set to 0) never gives f's class, so the
    rationale fidelity is 0 whichever chunk is chosen — the measure can fail."""
    from interp_ray.metrics.fidelity import ChunkLimeSettings, chunk_lime

    def proba(x: np.ndarray) -> np.ndarray:
        p1 = (x.reshape(len(x), -1).mean(1) > 0.99).astype(np.float64)
        return np.stack([1 - p1, p1], axis=1)

    res = chunk_lime(proba, np.ones((2, 1, 8, 8), dtype=np.float32),
                     settings=ChunkLimeSettings(k=1, chunk_size=2, num_samples=200))
    assert (res.f_class == 1).all() and res.rationale_fidelity == 0.0


def test_chunk_lime_refuses_a_chunk_that_does_not_divide_the_image():
    from interp_ray.errors import UserError
    from interp_ray.metrics.fidelity import ChunkLimeSettings, chunk_lime

    with pytest.raises(UserError, match="chunk_size 3"):
        chunk_lime(_one_chunk_model(0, 0), np.ones((1, 1, 8, 8), dtype=np.float32),
                   settings=ChunkLimeSettings(k=1, chunk_size=3))
