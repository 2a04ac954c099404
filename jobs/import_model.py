"""Import your own model (a model spec and a weights file) as one self-contained interp-ray checkpoint.

    interp-ray import-model torchvision:mobilenet_v3_small --weights model.pt --classes cat,dog \
        --input-size 224 --mean imagenet --std imagenet --output ckpt/mobilenet

SPEC is a registered name, torchvision:BUILDER, timm:NAME or module.path:callable (your factory or nn.Module class,
importable here). The weights (local or s3://; .safetensors, or a state dict that torch.load reads with
weights_only=True) are checked key by key and copied into the checkpoint. No Ray is started.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from interp_ray.errors import UserError
from jobs.common import add_model_arguments, exit_with, model_options


def class_names(raw: str | None) -> list[str] | None:
    """``--classes``: a file with one name per line, or names separated by commas."""
    if raw is None:
        return None
    path = Path(raw)
    names = path.read_text().splitlines() if path.is_file() else raw.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"--classes {raw!r} names no class")
    if len(set(names)) != len(names):
        raise UserError(f"--classes repeats a name: {sorted(n for n in set(names) if names.count(n) > 1)[0]!r}")
    return names


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="registered name, torchvision:BUILDER, timm:NAME or module.path:callable")
    p.add_argument("--weights", required=True, help="weights file: .safetensors or a torch state dict; local or s3://")
    p.add_argument("--classes", help="class names: a file with one per line, or a,b,c (default: 0..N-1)")
    p.add_argument("--output", required=True, help="checkpoint directory to write (local or s3://)")
    add_model_arguments(p)
    args = p.parse_args(argv)
    from interp_ray.checkpoint import import_model

    loaded = import_model(args.spec, weights=args.weights, output=args.output, options=model_options(args),
                          class_names=class_names(args.classes))
    m, norm = loaded.model, loaded.model.normalisation
    scaled = "no normalisation" if norm is None else f"mean {_short(norm['mean'])} std {_short(norm['std'])}"
    print(f"imported {args.spec}: input {'×'.join(map(str, m.input_shape))}, {m.num_classes} classes, {scaled}; "
          f"checkpoint {args.output} (digest {loaded.digest[:12]})")
    return 0


if __name__ == "__main__":
    exit_with(main)
