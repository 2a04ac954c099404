"""Explain image files with any registered method: ``interp-ray explain METHOD --checkpoint DIR IMAGE [IMAGE …]``.

    interp-ray explain METHOD --checkpoint outputs/method_digits digit.png          # a learned method's checkpoint
    interp-ray explain METHOD --checkpoint outputs/method_digits digit.png --tau 3 --json
    interp-ray explain gradcam --checkpoint outputs/scenes_cnn scene.png --picture cam.png

The method is looked up in the explainer registry and opened as every consumer opens it
(``interp_ray.session.open_session``): a learned method (``learned = True``) loads its own checkpoint ``DIR``; any
other is built around the classifier checkpoint ``DIR``. A learned method that reads the classifier's activations
also needs that classifier: ``--classifier``, by default the checkpoint its training recorded. Each image is decoded
once (``interp_ray.data.images.decode_image``) and resized to the model's input (grey-scale for 1-channel models).
``--option key=value`` passes a construction option (``--option layer=features``: the layer a saliency method reads
instead of its role default); ``--param key=value`` passes any field of the method's ``Params``; ``--tau`` and
``--target`` are shorthands. The text is the method's ``summary``; ``--picture`` writes its ``draw``, with
``--draw key=value`` for any field of its ``Drawing`` parameters. Bad input (unknown method, unreadable image,
missing checkpoint, bad parameter, a layer the model lacks) is a ``UserError``: one line on stderr, exit code 2.
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interp-ray explain", description=__doc__.splitlines()[0])
    p.add_argument("method", help="a registered explainer (an unknown name is answered with the list)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, …)")
    p.add_argument("--checkpoint", required=True,
                   help="the method's checkpoint (learned methods) or the classifier checkpoint to explain")
    p.add_argument("--classifier", default=None, metavar="DIR",
                   help="learned methods that read the classifier's activations: the classifier checkpoint "
                        "(default: the one the method was trained over)")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the method's parameters, value parsed as YAML (repeatable)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a construction option of the method, value parsed as YAML (repeatable), e.g. the layer a "
                        "saliency method reads: --option layer=features (`interp-ray layers CHECKPOINT` lists them; "
                        "the same as an explain-dataset config's options and the serve config's method_options)")
    p.add_argument("--tau", type=float, default=None, help="relevance threshold 1/tau (methods with a tau parameter)")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--json", action="store_true", help="print one JSON list of {image, explanation}")
    p.add_argument("--picture", default=None, metavar="PNG",
                   help="also write the method's picture (the saliency overlay, the captioned image, or the "
                        "method's own; with several images, _<i> is added before the suffix)")
    p.add_argument("--draw", "--am", dest="drawing", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of the method's drawing parameters, value parsed as YAML (repeatable; e.g. the "
                        "activation-maximisation settings of attribute pictures: rounds, n_iter, kappa, lr …)")
    return p


def key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML) → a dict; a pair without ``=`` is a UserError."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"{flag} {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def parse_drawing(explainer, pairs: Sequence[str]) -> Any:
    """``--draw`` pairs → the method's validated drawing parameters; a bad one is a UserError naming the field."""
    try:
        return explainer.parse_drawing(key_values(pairs, "--draw"))
    except UserError as e:
        raise UserError(f"--draw: {e}") from None


def parse_params(cls, pairs: Sequence[str], tau: float | None, target: int | None) -> dict[str, Any]:
    """``--param`` pairs and shorthands → a dict the method's ``Params`` model accepts (checked here)."""
    params = key_values(pairs, "--param")
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


def open_method(method: str, checkpoint: str, classifier: str | None = None, options: dict[str, Any] | None = None):
    """The method ``method`` (registry name) ready to explain images: ``--checkpoint`` is a learned method's own
    checkpoint or the classifier any other method explains; ``--classifier`` is for learned methods only;
    ``options`` (``--option``) are the method's construction options."""
    from interp_ray.explainers import get_explainer
    from interp_ray.models.base import UnknownLayerError
    from interp_ray.session import open_session

    options = options or {}
    try:
        if not get_explainer(method).learned:  # UnknownNameError (a UserError) lists the valid names
            if classifier is not None:
                raise UserError(f"--classifier is for learned methods; {method} explains the classifier --checkpoint")
            return open_session(method, classifier=checkpoint, **options)
        session = open_session(method, checkpoint=checkpoint, classifier=classifier, **options)
    except UnknownLayerError as e:   # a layer named with --option: the line says which flag named it
        named = [f"{k}={v}" for k, v in options.items() if f"'{v}'" in str(e)]
        raise UserError(f"--option {named[0]}: {e}" if named else str(e)) from None
    if classifier is not None and not session.explainer.layers():
        raise UserError(f"{method} carries its own predictor; --classifier is not used")
    return session


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


def format_explanation(path: str, explainer, e) -> list[str]:
    """Human-readable lines for one explanation: the method's ``summary`` after the image's path."""
    return f"{path}: {explainer.summary(e)}".splitlines()


def picture_path(template: str, i: int, n: int) -> str:
    if n == 1:
        return template
    p = Path(template)
    return str(p.with_name(f"{p.stem}_{i}{p.suffix or '.png'}"))


def write_picture(explainer, image: np.ndarray, explanation, path: str, drawing: Any = None) -> str:
    """The method's picture of ``explanation`` (``Explainer.draw``) as a PNG file at ``path``."""
    from interp_ray.explainers.base import picture_png

    png = picture_png(explainer.draw(image, explanation, **(drawing.model_dump() if drawing is not None else {})))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(png)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    session = open_method(args.method, args.checkpoint, args.classifier, key_values(args.options, "--option"))
    explainer = session.explainer
    params = parse_params(type(explainer), args.params, args.tau, args.target)
    # No --draw: the method draws with its own defaults (a learned method may then use pictures its checkpoint keeps)
    drawing = parse_drawing(explainer, args.drawing) if args.drawing else None
    images = [read_image(p, session.model) for p in args.images]  # every image checked before any work
    results = []
    for i, (path, image) in enumerate(zip(args.images, images)):
        # explains=True: each answer says whose prediction it explains, as the served answers do
        e = session.explain(image[None], [params.get("target", -1)], params, explains=True)[0]
        pic = write_picture(explainer, image, e, picture_path(args.picture, i, len(images)), drawing) \
            if args.picture else None
        results.append((path, e, pic))
    if args.json:
        print(json.dumps([{"image": path, "explanation": e.to_json(), **({"picture": pic} if pic else {})}
                          for path, e, pic in results]))
    else:
        for path, e, pic in results:
            print("\n".join(format_explanation(os.fspath(path), explainer, e)))
            if pic:
                print(f"  picture: {pic}")
    return 0


if __name__ == "__main__":
    from jobs.common import exit_with

    exit_with(main)
