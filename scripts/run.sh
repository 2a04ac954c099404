#!/usr/bin/env bash
# Set everything up (venv, dependencies, Java) and run the main job on the embedded default with a local Ray.
# Extra arguments go to the pipeline, e.g. scripts/run.sh --smoke
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec python -m jobs.pipeline --config configs/pipeline.yaml "$@"
