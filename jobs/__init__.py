"""Ray entrypoints: each module runs as ``python -m jobs.<name> --config cfg.yaml`` and under ``ray job submit``."""
