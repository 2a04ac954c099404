"""Fixtures for the explainer tests: a tiny CNN and a few random images (the models live in
interp_ray/testing/toy_models.py)."""

from __future__ import annotations

import numpy as np
import pytest

from interp_ray.testing.toy_models import tiny_cnn


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((6, 3, 16, 16), dtype=np.float32)
