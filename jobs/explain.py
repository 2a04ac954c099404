"""Explain image files with any registered method: ``interp-ray explain METHOD --checkpoint DIR IMAGE [IMAGE …]``.

    interp-ray explain flint --checkpoint outputs/flint_digits digit.png            # local interpretation
    interp-ray explain flint --checkpoint outputs/flint_digits digit.png --tau 3 --json
    interp-ray explain gradcam --checkpoint outputs/scenes_cnn scene.png --picture cam.png

The method is looked up in the explainer registry and built as every consumer builds it
(``interp_ray.session.ExplainSession``): a learned method (``learned = True``: flint, cnn_inte, interpnet, semantic,
vibi) loads its own checkpoint ``DIR``; any other is built around the classifier checkpoint ``DIR``. A learned method
that reads the classifier's activations (cnn_inte, interpnet, semantic, vibi) also needs that classifier:
``--classifier``, by default the checkpoint its training recorded; one that also runs it (vibi scores its rationale
with f) is built around it. Each image is decoded once (``interp_ray.data.images.decode_image``)
and resized to the model's input (grey-scale for 1-channel models). ``--param key=value`` passes any field of the
method's ``Params``; ``--tau`` and ``--target`` are shorthands. Bad input (unknown method, unreadable image, missing
checkpoint, bad parameter) is a ``UserError``: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from interp_ray.errors import UserError

# Extra keys printed as "key=value" in the text output when a method reports them (scalars only).
_SKIP_EXTRA = {"phi", "relevance", "attribute_labels", "class_attributes", "weights", "stage1_saliency",
               "stage1_weights", "stage2_loss", "stage1_loss"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interp-ray explain", description=__doc__.splitlines()[0])
    p.add_argument("method", help="a registered explainer (e.g. flint, gradcam, feature_inversion)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, …)")
    p.add_argument("--checkpoint", required=True,
                   help="the method's checkpoint (learned methods) or the classifier checkpoint to explain")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="learned methods that read activations (cnn_inte, interpnet, semantic, vibi): the classifier "
                        "checkpoint (default: the one the method was trained over)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the method's parameters, value parsed as YAML (repeatable)")
    p.add_argument("--tau", type=float, default=None, help="relevance threshold 1/tau (methods with a tau parameter)")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--json", action="store_true", help="print one JSON list of {image, explanation}")
    p.add_argument("--picture", default=None, metavar="PNG",
                   help="also write a picture: FLINT's local interpretation sheet, or the saliency overlay "
                        "(with several images, _<i> is added before the suffix)")
    p.add_argument("--am", dest="am", action="append", default=[], metavar="KEY=VALUE",
                   help="FLINT picture: activation-maximisation setting (rounds, n_iter, kappa, lr, lambda_tv …)")
    return p


def parse_am(pairs: Sequence[str], explainer) -> Any:
    """``--am`` pairs over the checkpoint's AM+PI settings → ``AMSection``; bad keys are a UserError."""
    from interp_ray.config import validate
    from interp_ray.explainers.flint.config import AMSection

    raw: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--am {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        raw[key.strip()] = yaml.safe_load(value)
    base = explainer.am_settings().model_dump() if hasattr(explainer, "am_settings") else {}
    return validate(AMSection, {**base, **raw}, source="--am")


def parse_params(cls, pairs: Sequence[str], tau: float | None, target: int | None) -> dict[str, Any]:
    """``--param`` pairs and shorthands → a dict the method's ``Params`` model accepts (checked here)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--param {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        params[key.strip()] = yaml.safe_load(raw)
    fields = set(cls.Params.model_fields)
    for key, value in (("tau", tau), ("target", target)):
        if value is None:
            continue
        if key not in fields:
            raise UserError(f"method {cls.name!r} has no {key!r} parameter; its parameters: "
                            f"{', '.join(sorted(fields)) or 'none'}")
        params[key] = value
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)} for method {cls.name!r}; valid: "
                        f"{', '.join(sorted(fields)) or 'none'}")
    cls.parse_params(params)  # a bad value is a UserError now, before any image is read
    return params


def _check_checkpoint(path: str, what: str) -> None:
    from interp_ray.checkpoint import CONFIG_FILE, is_remote

    if not is_remote(path) and not (Path(path.removeprefix("file://")) / CONFIG_FILE).is_file():
        raise UserError(f"{what} {path} does not exist (expected a directory holding {CONFIG_FILE})")


def build_session(method: str, checkpoint: str, classifier: str | None = None):
    """The method ``method`` (registry name) ready to explain images, from ``checkpoint`` (and ``classifier``)."""
    from interp_ray.checkpoint import load_classifier
    from interp_ray.explainers import get_explainer
    from interp_ray.explainers.base import build_explainer, check_fits
    from interp_ray.session import ExplainSession

    cls = get_explainer(method)  # UnknownNameError (a UserError) lists the valid names
    _check_checkpoint(checkpoint, "checkpoint")
    if not cls.learned:
        if classifier is not None:
            raise UserError(f"--classifier is for learned methods; {method} explains the classifier --checkpoint")
        return ExplainSession.build(method, load_classifier(checkpoint), None)
    explainer = build_explainer(method, None, checkpoint)
    source = None
    if explainer.layers():
        source = classifier or explainer.trained_on()
        if not source:
            raise UserError(f"{method} reads the classifier's activations and its checkpoint does not record which "
                            f"classifier: pass --classifier DIR")
        _check_checkpoint(source, "classifier checkpoint")
    elif classifier is not None:
        raise UserError(f"{method} carries its own predictor; --classifier is not used")
    loaded = load_classifier(source) if source else None
    if loaded is not None and "model" in cls.needs:
        # a learned method that also runs the classifier itself (VIBI scores its rationale with f): built around it
        return ExplainSession.build(method, loaded, checkpoint)
    if loaded is not None:
        check_fits(explainer, loaded)
    return ExplainSession.around(explainer, loaded)


def read_image(path: str, model) -> np.ndarray:
    """An image file as float32 C×H×W in [0, 1], resized to the model's input (grey for 1-channel models)."""
    from interp_ray.data.images import decode_image

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not an image file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    mode = "L" if model.in_channels == 1 else "RGB"
    return decode_image(data, size=model.image_size, mode=mode, name=path)


def format_explanation(path: str, method: str, e) -> list[str]:
    """Human-readable lines for one explanation (any method)."""
    name = f" '{e.label_name}'" if e.label_name is not None else ""
    head = f"{path}: {method} -> class {e.label}{name}"
    ex = e.extra or {}
    if "interpreter_probability" in ex:  # FLINT
        fname = ex.get("predictor_class_name")
        agree = "agrees" if ex.get("agrees") else "DISAGREES"
        head += (f" (interpreter g p={ex['interpreter_probability']:.3f}; predictor f: {ex['predictor_class']}"
                 f"{f' {fname!r}' if fname is not None else ''} p={ex['predictor_probability']:.3f}, {agree})")
    lines = [head]
    if e.attributes is not None:
        tau = ex.get("tau")
        labels = ex.get("attribute_labels") or {}
        lines.append(f"  relevant attributes{f' (tau={tau:g}, relevance > {1 / tau:.3f})' if tau else ''}:"
                     + ("" if e.attributes else " none"))
        for attr, value in e.attributes.items():
            lines.append(f"    {attr:<10} {value:+.3f}" + (f"   ~ {labels[attr]}" if attr in labels else ""))
        if ex.get("class_attributes") is not None:
            lines.append(f"  attributes of class {e.label_name or e.label} (global): "
                         + (", ".join(ex["class_attributes"]) or "none"))
    if e.sentence:
        lines.append(f"  sentence: {e.sentence}")
    if e.saliency is not None:
        sal = np.asarray(e.saliency)
        r, c = np.unravel_index(int(np.argmax(sal)), sal.shape)
        lines.append(f"  saliency {sal.shape[0]}x{sal.shape[1]}: peak at row {r}, column {c}; mean {sal.mean():.3f}")
    if e.path:
        lines.append(f"  path: {json.dumps(e.path, default=str)}")
    if e.neurons:
        lines.append(f"  neurons: {json.dumps(e.neurons)}")
    scalars = {k: v for k, v in ex.items() if k not in _SKIP_EXTRA and isinstance(v, (int, float, str, bool))
               and k not in ("interpreter_probability", "predictor_class", "predictor_probability", "agrees",
                             "predictor_class_name", "tau", "interpreter_class")}
    if scalars:
        lines.append("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in scalars.items()))
    return lines


def picture_path(template: str, i: int, n: int) -> str:
    if n == 1:
        return template
    p = Path(template)
    return str(p.with_name(f"{p.stem}_{i}{p.suffix or '.png'}"))


def write_picture(explainer, image: np.ndarray, explanation, path: str, params: dict[str, Any], am=None) -> str:
    if explainer.name == "flint":
        from interp_ray.explainers.flint.plots import write_local_sheet

        out, _ = write_local_sheet(explainer, image, path, tau=params.get("tau"), target=params.get("target", -1),
                                   am=am)
        return out
    if explanation.saliency is not None:
        from interp_ray.plots import save_overlay

        return save_overlay(path, image, explanation.saliency, title=f"{explainer.name}: {explanation.label}")
    raise UserError(f"method {explainer.name!r} has no picture to write")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    session = build_session(args.method, args.checkpoint, args.classifier)
    explainer = session.explainer
    params = parse_params(type(explainer), args.params, args.tau, args.target)
    am = parse_am(args.am, explainer)
    images = [read_image(p, session.model) for p in args.images]  # every image checked before any work
    results = []
    for i, (path, image) in enumerate(zip(args.images, images)):
        e = session.explain(image[None], [params.get("target", -1)], params)[0]
        pic = write_picture(explainer, image, e, picture_path(args.picture, i, len(images)), params, am) \
            if args.picture else None
        results.append((path, e, pic))
    if args.json:
        print(json.dumps([{"image": path, "explanation": e.to_json(), **({"picture": pic} if pic else {})}
                          for path, e, pic in results]))
    else:
        for path, e, pic in results:
            print("\n".join(format_explanation(os.fspath(path), args.method, e)))
            if pic:
                print(f"  picture: {pic}")
    return 0


if __name__ == "__main__":
    from jobs.common import exit_with

    exit_with(main)
