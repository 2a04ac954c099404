"""Explainers, one folder per method (one file for a small one), behind the protocol in ``base``."""

from interp_ray.explainers.base import (EXPLAINERS, Explainer, Explanation, explainer_names, get_explainer,
                                        register)

__all__ = ["EXPLAINERS", "Explainer", "Explanation", "explainer_names", "get_explainer", "register"]
