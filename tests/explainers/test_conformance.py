"""Every registered method held to one contract, generated from the registry (``explainer_names()``): the suite a
method's author runs on their own method (``interp_ray.testing.conformance.ConformanceSuite``), parametrised here
over the registry. The same explanations through Ray Serve over real HTTP are checked for every served method in
tests/serving/test_serving_http.py.

A method added in any module is picked up here with no edit: a learned one provides its small checkpoint with the
classmethod ``specimen(path, classifier)`` in its own folder.
"""

from __future__ import annotations

import pytest

from interp_ray.explainers import explainer_names, get_explainer
from interp_ray.explainers.base import Explainer
from interp_ray.testing.conformance import ConformanceSuite

METHODS = explainer_names()


class TestEveryRegisteredMethod(ConformanceSuite):
    @classmethod
    def methods(cls) -> list[str]:
        return METHODS

    @pytest.fixture(scope="class", params=METHODS)
    @classmethod
    def method_name(cls, request) -> str:
        return request.param

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_torch_threads(cls, test_torch_threads) -> int:
        return test_torch_threads  # --torch-threads (1 unless told otherwise), as every trained fixture runs


def test_every_learned_method_has_a_specimen():
    learned = [n for n in METHODS if get_explainer(n).learned]
    missing = [n for n in learned if get_explainer(n).specimen.__func__ is Explainer.specimen.__func__]
    assert learned and not missing, missing


def test_the_suite_covers_what_the_registry_holds():
    # The package scan finds every method module: the five papers' methods and the baselines.
    assert {"interpnet", "semantic", "flint", "cnn_inte", "feature_inversion", "gradcam", "gradient", "occlusion",
            "center"} <= set(METHODS)


def test_the_suite_explains_a_normalised_classifier(tmp_path):
    """The cross-path checks above run over the digits specimen, which normalises its input in forward (issue 36):
    normalisation applied on one path only (or twice) would make that path's explanations differ from the rest."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from interp_ray.testing.specimens import save_digits_classifier

    save_digits_classifier(tmp_path / "digits")
    model = load_classifier(tmp_path / "digits").model
    norm = model.normalisation
    assert norm["mean"] == pytest.approx([0.3]) and norm["std"] == pytest.approx([0.4])
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        normalised = model(x)
        model.set_normalisation(None, None)
        assert torch.allclose(model((x - 0.3) / 0.4), normalised, atol=1e-5)
        assert not torch.allclose(model(x), normalised, atol=1e-3)
