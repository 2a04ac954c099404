"""Classifiers with named taps, built from a model spec (a registered name, torchvision:…, timm:…, module:callable)."""

from interp_ray.models.base import Classifier, UnknownLayerError
from interp_ray.models.roles import ROLES, find_roles, layers_for_role
from interp_ray.models.spec import build_model, check_spec, parse_spec
from interp_ray.models.weights import load_weights
from interp_ray.models.zoo import MODELS

__all__ = ["Classifier", "MODELS", "ROLES", "UnknownLayerError", "build_model", "check_spec", "find_roles",
           "layers_for_role", "load_weights", "parse_spec"]
