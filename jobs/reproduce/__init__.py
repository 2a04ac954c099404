"""The reproduction job: every claim of the papers over seeds, beside the paper's figures (docs/reproduction.md).

    python -m jobs.reproduce --config configs/reproduce.yaml [--out DIR] [--only STAGE] [--fresh]

``engine`` runs the stages seed by seed, resumably, and writes the report; ``stages/`` holds one module per method,
each defining ``NAME``, ``run(section, seed, workdir)`` and ``rows(per_seed, section)`` (the engine's docstring).
"""

from jobs.reproduce.engine import ReproduceConfig, main, run, shared_dir

__all__ = ["ReproduceConfig", "main", "run", "shared_dir"]
