#!/usr/bin/env bash
# Set everything up (venv, dependencies, Java) and run the test suite. Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
export RAY_TMPDIR="${RAY_TMPDIR:-${TMPDIR:-/tmp}/ray-interp-ray-tests}"
set +e
python -m pytest "$@"
code=$?
# pytest's 5 means "no tests collected" (e.g. a -k that matches nothing): not a failure of the suite.
[ "$code" = 5 ] && code=0
exit "$code"
