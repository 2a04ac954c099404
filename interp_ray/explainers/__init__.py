"""Explainers, one file per method, behind the protocol in ``base``."""

from interp_ray.explainers.base import (EXPLAINERS, Explainer, Explanation, explainer_names, get_explainer,
                                        register)

__all__ = ["EXPLAINERS", "Explainer", "Explanation", "explainer_names", "get_explainer", "register"]
