"""One model spec string, wherever a model is named: where the network comes from, in the forms Python users know.

- ``digits_cnn``, ``resnet18``: a registered model (``interp_ray.models.zoo``);
- ``torchvision:<builder>``: any torchvision classification builder, built with ``weights=None`` (nothing is
  downloaded; weights come from a file) and ``num_classes`` from the options;
- ``timm:<name>``: ``timm.create_model(name, pretrained=False, …)`` where timm is installed;
- ``<module>:<callable>``: the user's own factory function or ``nn.Module`` class, called with its options. The module
  must be importable wherever the model is built — on a cluster, ship it with Ray's runtime_env (``working_dir`` or
  ``py_modules``; ``ray job submit --working-dir .``).

Options are one flat dict, recorded as such in a checkpoint's ``config.json`` so that ``build_model(name, **options)``
rebuilds the same network anywhere. For every spec, ``num_classes``, ``in_channels``, ``image_size`` (the square
input the model takes) and ``mean``/``std`` (per-channel normalisation, applied inside the classifier's forward)
belong to interp-ray; the remaining options go to the builder. A foreign builder also receives ``num_classes``,
``in_channels`` or ``image_size`` when its signature names them (torchvision always takes ``num_classes``).

A foreign network is wrapped in a ``Classifier`` as it is: its layers are its ``named_modules()`` paths (``layer3``,
``features.12``), tapped by forward hooks like any registered model's. It is probed once at build time (one random
input): the probe finds its class count when the builder does not take one, and its roles
(``interp_ray.models.roles``), which give its default layers.

A checkpoint's ``config.json`` names the callable that builds its model, so opening a checkpoint runs that code. The
callable must therefore be an ``nn.Module`` subclass or a Python function outside the standard library and the
libraries that load or run arbitrary code (``torch.hub``, ``pickle``…): a config cannot call ``os.system`` or
``subprocess.run``. This is a guard, not a sandbox: open checkpoints of ``module:callable`` models only from
people whose code you would import.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from interp_ray.errors import UserError
from interp_ray.models.base import Classifier
from interp_ray.models.roles import find_roles, probe
from interp_ray.models.zoo import MODELS

# Options that describe the input and output, owned by interp-ray (the rest go to the builder).
INPUT_OPTIONS = ("num_classes", "in_channels", "image_size", "mean", "std")
NORMALISATION = ("mean", "std")
# Named presets for --mean/--std (torchvision's ImageNet statistics, which its pretrained weights expect).
PRESETS = {"imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
# Top-level packages a checkpoint may not name as ``module:callable``: they load or run arbitrary code or files.
REFUSED_PACKAGES = frozenset({"torch", "torchvision", "ray", "numpy", "pandas", "pyarrow", "joblib", "dill",
                              "cloudpickle", "safetensors", "huggingface_hub", "transformers", "timm", "yaml",
                              "pip", "setuptools", "IPython", "interp_ray", "jobs", "serving"})
RUNTIME_ENV_HINT = ("ship your code with Ray's runtime_env (working_dir or py_modules; "
                    "`ray job submit --working-dir .`) or install it on every node")


class ModelImportError(UserError):
    """A ``module:callable`` spec whose module cannot be imported here: the user's code did not reach this process.
    Serving catches it to keep the replica up and say so on ``/v1/health`` (a crash loop would hide the message)."""

    def __init__(self, spec: str, module: str, reason: str):
        self.spec, self.module, self.reason = spec, module, reason
        super().__init__(f"model {spec!r}: cannot import {module!r} here ({reason}); {RUNTIME_ENV_HINT}")


@dataclass(frozen=True)
class ModelSpec:
    text: str
    kind: str      # "registered", "torchvision", "timm" or "import"
    target: str    # the registered/builder/timm name, or "module:callable"

    @property
    def is_foreign(self) -> bool:
        return self.kind != "registered"


def parse_spec(text: str) -> ModelSpec:
    """Split a spec string into its kind and target; a malformed one is a one-line ``UserError``."""
    text = str(text).strip()
    if ":" not in text:
        if text not in MODELS:
            raise UserError(f"unknown model {text!r}; valid: {', '.join(MODELS.names())} "
                            f"(or torchvision:NAME, timm:NAME, my_module:build)")
        return ModelSpec(text, "registered", text)
    head, _, tail = text.partition(":")
    if not head or not tail or ":" in tail:
        raise UserError(f"model {text!r}: expected NAME, torchvision:NAME, timm:NAME or module.path:callable")
    if head in ("torchvision", "timm"):
        return ModelSpec(text, head, tail)
    if not all(part.isidentifier() for part in head.split(".")) or not tail.isidentifier():
        raise UserError(f"model {text!r}: {head!r}:{tail!r} is not an import path (module.path:callable)")
    return ModelSpec(text, "import", text)


def check_spec(text: str) -> str:
    """Validate what can be checked without running user code: the form, a registered or torchvision name, timm's
    presence. A ``module:callable`` is imported only when built (it may exist only on the cluster's nodes)."""
    spec = parse_spec(text)
    if spec.kind == "torchvision":
        _torchvision_builder(spec)
    elif spec.kind == "timm":
        _timm(spec)
    return spec.text


def build_model(name: str, **options) -> Classifier:
    """Build the classifier a spec names; unknown options fail with the list of valid ones."""
    spec = parse_spec(name)
    options = resolve_presets(options)
    if not spec.is_foreign:
        return _build_registered(spec, options)
    return _build_foreign(spec, options)


def resolve_presets(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a named mean/std (``imagenet``) replaced by its numbers."""
    out = dict(options)
    for key in NORMALISATION:
        if isinstance(out.get(key), str):
            preset = PRESETS.get(out[key].lower())
            if preset is None:
                raise UserError(f"{key} {out[key]!r}: give numbers (one per channel) or one of {', '.join(PRESETS)}")
            out[key] = preset[key]
    return out


def _build_registered(spec: ModelSpec, options: dict[str, Any]) -> Classifier:
    builder = MODELS.get(spec.target)
    valid = list(inspect.signature(builder).parameters) + list(NORMALISATION)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for model {spec.text!r}; valid: {', '.join(valid)}")
    norm = {k: options.pop(k) for k in NORMALISATION if k in options}
    model = builder(**options)
    if norm:
        model.set_normalisation(norm.get("mean"), norm.get("std"))
    return model


def _build_foreign(spec: ModelSpec, options: dict[str, Any]) -> Classifier:
    rest = dict(options)
    known = {key: _positive_int(spec, key, rest.pop(key, default))
             for key, default in (("num_classes", None), ("in_channels", 3), ("image_size", 224))}
    in_channels, image_size = known["in_channels"], known["image_size"]
    mean, std = rest.pop("mean", None), rest.pop("std", None)
    factory = _factory(spec, known)
    kwargs = _factory_kwargs(spec, factory, rest, known)
    try:
        net = factory(**kwargs)
    except TypeError as e:
        raise UserError(f"model {spec.text!r} rejects its options {sorted(kwargs)}: {e}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"model {spec.text!r} returned a {type(net).__name__}, not a torch.nn.Module")
    probed = probe(net, (in_channels, image_size, image_size))
    out = probed.output
    if out is None or out.ndim != 2:
        shape = "nothing" if out is None else "×".join(map(str, out.shape))
        raise UserError(f"model {spec.text!r} must return logits of shape N×classes; it returned {shape}")
    if known["num_classes"] is not None and out.shape[1] != known["num_classes"]:
        raise UserError(f"model {spec.text!r} gives {out.shape[1]} logits but num_classes is {known['num_classes']}; "
                        f"make the options agree (does its builder take num_classes?)")
    roles = find_roles(net, probed=probed)
    default_layers = list(dict.fromkeys(roles.get("last_maps", []) + roles.get("penultimate", [])))
    model = Classifier(net, num_classes=int(out.shape[1]), in_channels=in_channels, image_size=image_size,
                       default_layers=default_layers,
                       mean=mean, std=std)
    model._roles = roles
    return model


def _positive_int(spec: ModelSpec, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"model {spec.text!r}: {key} must be a positive integer, got {value!r}")
    return value


def _torchvision_builder(spec: ModelSpec) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)   # classification builders only (not detection, segmentation, video)
    if spec.target not in names:
        close = difflib.get_close_matches(spec.target, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise UserError(f"model {spec.text!r}: {spec.target!r} is not a torchvision classification model{hint}")
    return tvm.get_model_builder(spec.target)


def _timm(spec: ModelSpec):
    if importlib.util.find_spec("timm") is None:
        raise UserError(f"model {spec.text!r} needs timm, which is not installed here: pip install timm "
                        f"(on a cluster, also in the runtime_env's pip list)")
    import timm

    if not timm.is_model(spec.target):
        raise UserError(f"model {spec.text!r}: timm has no model {spec.target!r} (timm.list_models() lists them)")
    return timm


def _factory(spec: ModelSpec, known: dict[str, Any]) -> Callable[..., nn.Module]:
    if spec.kind == "torchvision":
        builder = _torchvision_builder(spec)
        if known["in_channels"] != 3:
            raise UserError(f"model {spec.text!r} takes 3-channel images, got in_channels={known['in_channels']}")

        def build_torchvision(**kwargs):
            return builder(weights=None, **kwargs)

        build_torchvision.__signature__ = inspect.Signature(
            [inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY),
             inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
        return build_torchvision
    if spec.kind == "timm":
        timm = _timm(spec)

        def build_timm(*, num_classes: int | None = None, in_channels: int = 3, **kwargs):
            extra = {} if num_classes is None else {"num_classes": num_classes}
            return timm.create_model(spec.target, pretrained=False, in_chans=in_channels, **extra, **kwargs)

        return build_timm
    return _import_callable(spec)


def _import_callable(spec: ModelSpec) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.target.partition(":")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in REFUSED_PACKAGES:
        raise UserError(f"model {spec.text!r}: {top!r} is not a model library; name your own module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelImportError(spec.text, module_name, str(e)) from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise UserError(f"model {spec.text!r}: module {module_name!r} has no attribute {attr!r}")
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)) and not inspect.isfunction(obj):
        raise UserError(f"model {spec.text!r}: {attr!r} is a {type(obj).__name__}; name an nn.Module class or a "
                        f"factory function")
    return obj


def _factory_kwargs(spec: ModelSpec, factory: Callable, options: dict[str, Any],
                    known: dict[str, Any]) -> dict[str, Any]:
    """The builder's own options, plus those of num_classes/in_channels/image_size its signature names."""
    if "weights" in options or "pretrained" in options:
        raise UserError(f"model {spec.text!r}: weights come from a file (--weights / weights), never downloaded; "
                        f"drop the 'weights'/'pretrained' option")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(options) - named) if not var_kw else []
    if unknown:
        valid = sorted(named | set(INPUT_OPTIONS))
        raise UserError(f"unknown option(s) {', '.join(unknown)} for model {spec.text!r}; valid: {', '.join(valid)}")
    kwargs = dict(options)
    for key, value in known.items():
        if key in named and value is not None:
            kwargs[key] = value
    return kwargs
