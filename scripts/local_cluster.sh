#!/usr/bin/env bash
# A multi-node Ray cluster plus an S3 server (moto) on 127.0.0.1, by hand:
#   eval "$(scripts/local_cluster.sh up)"     # head + 2 worker nodes (resources w1, w2) + S3 with bucket interp-ray
#   scripts/local_cluster.sh status | env | down
# Uses the venv's Python (VENV, default ./.venv); see cluster/README.md "A cluster on one machine".
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-$PWD/.venv}/bin/python"
[ -x "$PY" ] || PY="$(command -v python)"
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" scripts/local_cluster.py "$@"
