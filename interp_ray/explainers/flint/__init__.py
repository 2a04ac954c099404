"""FLINT (Parekh et al., NeurIPS 2021), one folder: ``explainer`` registers the method; the modules beside it are
its configuration, networks, losses, AM+PI, interpretation, training and pictures (see ``explainer``'s docstring).
Importing the package registers "flint" (the explainer registry's scan imports each method package)."""

from interp_ray.explainers.flint.explainer import FlintExplainer

__all__ = ["FlintExplainer"]
