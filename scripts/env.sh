# Sourced by scripts/run.sh and scripts/test.sh: make (or reuse) the virtual environment and the Java runtime.
# Re-installs only when pyproject.toml changed since the last install (a stamp file remembers its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INTERP_RAY_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.interp-ray-installed-$( (cat "$ROOT/pyproject.toml"; "$VENV/bin/python" -V) | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing interp-ray and its dependencies into $VENV (a few minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  # torch first, on its own: pip then takes the local wheels where the machine has them.
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$VENV/bin/python" -c "import interp_ray, ray, torch, torchvision, pycocoevalcap" \
    || { echo "[setup] install failed: see the pip messages above" >&2; exit 1; }
  rm -f "$VENV"/.interp-ray-installed-*
  touch "$stamp"
fi

# Debian packages the project needs beside the venv; never a download of their own. apt_need FILE PACKAGE WHY:
# install PACKAGE when FILE is missing (as root with apt-get), else say what will not work.
apt_need() {
  local file="$1" package="$2" why="$3"
  [ -e "$file" ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing $package ($why)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null; } \
      || echo "[setup] warning: could not install $package; $why will not work" >&2
  else
    echo "[setup] warning: $file is missing: $why will not work (apt-get install $package, as root)" >&2
  fi
}
# METEOR (pycocoevalcap) runs a Java jar.
command -v java >/dev/null 2>&1 || apt_need /usr/bin/java default-jre-headless "METEOR scores"
# Fashion-MNIST, the real-size dataset (configs/fashion_mnist.yaml), is Debian's package.
apt_need /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz dataset-fashion-mnist "the Fashion-MNIST configs"
# The web page's browser tests drive Debian's Chromium through Playwright (its own browser download needs internet).
apt_need /usr/bin/chromium chromium "the web page's browser tests"

export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
