"""VIBI (Bang et al., AAAI 2021): a learned explainer that keeps the k image chunks which let an approximator
reproduce the black box's class. Importing the package registers the method ("vibi")."""

from interp_ray.explainers.vibi.explainer import VIBI

__all__ = ["VIBI"]
