"""InterpNET (Barratt 2017), one folder: ``config`` (no torch), ``tables`` (what it learns from), ``networks``,
``training``, ``decoding`` and ``explainer``, registered as "interpnet" when the registry scan imports this package."""

from interp_ray.explainers.interpnet.explainer import InterpNET

__all__ = ["InterpNET"]
