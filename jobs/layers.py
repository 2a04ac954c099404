"""List a model's layers with their output shapes and roles (one probe): what to name in a config.

    interp-ray layers torchvision:resnet18 --input-size 64 [--weights model.pt] [--depth 1]
    interp-ray layers ckpt/mobilenet          # an interp-ray classifier checkpoint

Each module path (as named_modules() spells it, what every layer option takes) is shown with its output shape for
one input, and the roles a method can ask for: saliency (the map a saliency method reads), last_maps (the last two
spatial maps) and penultimate (the vector the final layer reads). No Ray is started.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from interp_ray.errors import UserError
from jobs.common import add_model_arguments, exit_with, model_options


def load(spec: str, weights: str | None, options: dict):
    """A checkpoint directory (or URI) is loaded; anything else is built as a model spec (weights checked when
    given)."""
    from interp_ray.checkpoint import CONFIG_FILE, load_classifier
    from interp_ray.models import build_model, load_weights
    from interp_ray.storage import is_remote

    if is_remote(spec) or (Path(spec) / CONFIG_FILE).is_file():
        if weights or options:
            raise UserError(f"{spec} is a checkpoint: it carries its weights and options; drop --weights/--option")
        return load_classifier(spec).model
    model = build_model(spec, **options)
    if weights:
        load_weights(model.net, weights, what=f"model {spec!r}", num_classes=model.num_classes)
    return model.eval()


def table(model, depth: int | None = None) -> list[str]:
    """The lines ``interp-ray layers`` prints: a module table, then one line per role."""
    from interp_ray.models.roles import ROLES, find_roles, missing_role, probe

    probed = probe(model.net, model.input_shape)
    roles = find_roles(model, probed=probed)
    marks: dict[str, list[str]] = {}
    for role, names in roles.items():
        for name in names:
            marks.setdefault(name, []).append(role)
    rows = [(name, kind, "×".join(map(str, probed.shapes[name])) if probed.shapes[name] is not None else "-",
             probed.calls[name], ", ".join(marks.get(name, [])))
            for name, kind in probed.types.items() if depth is None or name.count(".") < depth or name in marks]
    width = max([len(r[0]) for r in rows] + [5])
    kinds = max([len(r[1]) for r in rows] + [4])
    lines = [f"{'layer':<{width}}  {'type':<{kinds}}  {'output':<14}  role"]
    for name, kind, shape, calls, role in rows:
        shape = shape if calls <= 1 else f"{shape} ({calls} calls)"
        shape = shape if calls else "- (not called)"
        lines.append(f"{name:<{width}}  {kind:<{kinds}}  {shape:<14}  {role}".rstrip())
    lines.append("")
    lines.append(f"input {'×'.join(map(str, model.input_shape))}, {model.num_classes} classes; roles:")
    for role in ROLES:
        if role in roles:
            shapes = ", ".join(f"{n} ({'×'.join(map(str, probed.shapes[n]))})" for n in roles[role])
            lines.append(f"  {role:<12} {shapes}")
        else:
            lines.append(f"  {role:<12} none: {missing_role(role, model)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="model spec (registered name, torchvision:…, timm:…, module:callable) or checkpoint")
    p.add_argument("--weights", help="weights file to check against the model (local or s3://)")
    p.add_argument("--depth", type=int, help="show module paths with at most this many parts (roles always shown)")
    add_model_arguments(p)
    args = p.parse_args(argv)
    if args.depth is not None and args.depth < 1:
        raise UserError(f"--depth must be at least 1, got {args.depth}")
    print("\n".join(table(load(args.spec, args.weights, model_options(args)), args.depth)))
    return 0


if __name__ == "__main__":
    exit_with(main)
