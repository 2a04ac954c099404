"""Dong et al.'s captioner (CVPR 2017), one folder: ``config`` (no torch), ``networks``, ``training``, ``labels``
(prediction-difference neuron labels), ``revision`` (labelling and editing neurons, a mixin of the explainer) and
``explainer``, registered as "semantic" when the registry scan imports this package."""

from interp_ray.explainers.semantic.explainer import SemanticExplainer

__all__ = ["SemanticExplainer"]
