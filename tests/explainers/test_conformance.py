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
