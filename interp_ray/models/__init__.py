"""Classifiers with named taps, built by name."""

from interp_ray.models.base import Classifier, UnknownLayerError
from interp_ray.models.zoo import MODELS, build_model

__all__ = ["Classifier", "MODELS", "UnknownLayerError", "build_model"]
