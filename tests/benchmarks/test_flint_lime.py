"""benchmarks.flint_lime's LIME cache: reused only for the same weights and settings."""

from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.flint_lime import cached_lime, weights_digest
from interp_ray.data.base import ArrayDataset
from interp_ray.models import build_model


def test_cache_is_keyed_by_weights_and_settings(tmp_path):
    torch.manual_seed(0)
    model = build_model("flint_mnist").eval()
    rng = np.random.default_rng(0)
    test = ArrayDataset(name="t", split="test", images=rng.random((3, 1, 28, 28), dtype=np.float32),
                        labels=np.zeros(3), class_names=[str(i) for i in range(10)])
    cache = tmp_path / "lime.npz"
    args = SimpleNamespace(num_samples=60, seed=0, lime_cache=str(cache))
    first = cached_lime(model, test, 3, args)
    assert first.shape == (3,) and ((0 <= first) & (first < 10)).all()
    np.savez(cache, key=np.load(cache)["key"], lime=np.array([7, 7, 7]))  # mark the cached answer
    assert cached_lime(model, test, 3, args).tolist() == [7, 7, 7]           # same weights, same settings: reused
    other = build_model("flint_mnist").eval()
    assert weights_digest(other) != weights_digest(model)
    cached_lime(other, test, 3, args)  # other weights: recomputed, and the cache now holds their key
    assert str(np.load(cache)["key"]).startswith(weights_digest(other))
    assert cached_lime(model, test, 3, SimpleNamespace(**{**vars(args), "num_samples": 61})).shape == (3,)
    assert str(np.load(cache)["key"]).endswith(":3:61:0")
