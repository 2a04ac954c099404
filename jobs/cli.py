"""``interp-ray <command> …``: one entry point over the jobs (each is also ``python -m jobs.<module>``)."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from jobs.common import EXIT_USAGE, run_main

# command -> job module; each module has main(argv) -> int.
COMMANDS: dict[str, str] = {
    "train-classifier": "jobs.train_classifier",
    "extract": "jobs.extract_activations",
    "fit-cnn-inte": "jobs.fit_cnn_inte",
    "pipeline": "jobs.pipeline",
    "train-flint": "jobs.train_flint",
    "train-explainer": "jobs.train_explainer",
    # the commands of the two jobs train-explainer replaced (the config's ``method`` says what is trained)
    "train-interpnet": "jobs.train_explainer",
    "train-semantic": "jobs.train_explainer",
    "revise-caption": "jobs.revise_caption",
    "evaluate": "jobs.evaluate",
    "explain": "jobs.explain",
    "explain-dataset": "jobs.explain_dataset",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    available = {c: m for c, m in COMMANDS.items() if importlib.util.find_spec(m) is not None}
    if not args or args[0] in ("-h", "--help"):
        print("usage: interp-ray <command> [--config cfg.yaml] [--set key=value …]\ncommands: "
              + ", ".join(sorted(available)))
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command not in available:
        print(f"error: unknown command {command!r}; valid: {', '.join(sorted(available))}", file=sys.stderr)
        return EXIT_USAGE
    if command == "explain" and any(a == "--url" or a.startswith("--url=") for a in rest):
        from serving import client  # a served deployment answers instead of a local model

        return run_main(client.main, rest)
    module = importlib.import_module(available[command])
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
