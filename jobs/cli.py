"""``interp-ray <command> …``: one entry point over the jobs (each is also ``python -m jobs.<module>``)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

from jobs.common import EXIT_USAGE, import_from_cwd, run_main

# command -> job module for the jobs of no particular method; each module has main(argv) -> int. A method's own job
# (its training, its fit) declares its commands itself, ``CLI_COMMANDS = ("name", …)`` at the module's top level.
GENERIC_COMMANDS: dict[str, str] = {
    "train-classifier": "jobs.train_classifier",
    "extract": "jobs.extract_activations",
    "pipeline": "jobs.pipeline",
    "reproduce": "jobs.reproduce",
    "train-explainer": "jobs.train_explainer",
    "revise-caption": "jobs.revise_caption",
    "evaluate": "jobs.evaluate",
    "explain": "jobs.explain",
    "explain-dataset": "jobs.explain_dataset",
    "import-model": "jobs.import_model",
    "layers": "jobs.layers",
    "serve": "serving.run",   # Ray Serve's `serve run`, its local Ray on 127.0.0.1
}


def declared_commands() -> dict[str, str]:
    """command → module for each ``jobs/*.py`` declaring ``CLI_COMMANDS``, read with ``ast`` (importing the jobs
    would load torch and Ray)."""
    spec = importlib.util.find_spec("jobs")
    out: dict[str, str] = {}
    for path in sorted(Path(spec.origin).parent.glob("*.py")) if spec and spec.origin else []:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CLI_COMMANDS"
                                                    for t in node.targets):
                out.update({name: f"jobs.{path.stem}" for name in ast.literal_eval(node.value)})
    return out


def commands() -> dict[str, str]:
    """Every command → its job module."""
    return {**GENERIC_COMMANDS, **declared_commands()}


def summary(module: str) -> str:
    """A command's few words: its module docstring's first sentence, read without importing the module (the jobs
    import torch and Ray, which would make ``--help`` take seconds)."""
    spec = importlib.util.find_spec(module)
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) if spec and spec.origin else None
    line = (doc or "").strip().splitlines()[0] if doc else ""
    for stop in (": ``", " (", "; ", ", one checkpoint", ", into"):
        line = line.split(stop)[0]
    return line.rstrip(".:")


def usage(available: dict[str, str]) -> str:
    width = max(map(len, available), default=0)
    lines = ["usage: interp-ray <command> [--config cfg.yaml] [--set key=value …]", "",
             "commands (interp-ray <command> --help for its options):"]
    lines += [f"  {c:<{width}}  {summary(m)}" for c, m in sorted(available.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    available = {c: m for c, m in commands().items() if importlib.util.find_spec(m) is not None}
    if not args or args[0] in ("-h", "--help"):
        print(usage(available))
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command not in available:
        print(f"error: unknown command {command!r}; valid: {', '.join(sorted(available))}", file=sys.stderr)
        return EXIT_USAGE
    if command == "explain" and any(a == "--url" or a.startswith("--url=") for a in rest):
        from serving import client  # a served deployment answers instead of a local model

        return run_main(client.main, rest)
    import_from_cwd()   # a model spec's ./my_models.py is found as with `python -m jobs.<module>`
    module = importlib.import_module(available[command])
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
