"""Guided Feature Inversion (Du, Liu, Song, Hu — KDD 2018), registered as "feature_inversion".

``config`` (``GFISettings`` and the request parameters, no torch), ``optimisation`` (the two-stage optimisation of
the channel weights; the method is described there) and ``explainer`` (``FeatureInversion``). Importing the package
registers the method (the registry scan imports it).
"""

from interp_ray.explainers.feature_inversion.config import FeatureInversionParams, GFISettings
from interp_ray.explainers.feature_inversion.explainer import FeatureInversion, compute_model
from interp_ray.explainers.feature_inversion.optimisation import GFIResult, run_gfi

__all__ = ["FeatureInversion", "FeatureInversionParams", "GFIResult", "GFISettings", "compute_model", "run_gfi"]
