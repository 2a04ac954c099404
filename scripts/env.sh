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

# METEOR (pycocoevalcap) runs a Java jar.
if ! command -v java >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing a Java runtime for METEOR (default-jre-headless)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q default-jre-headless >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q default-jre-headless >/dev/null; }
  else
    echo "[setup] warning: no java on PATH; METEOR scores will be unavailable (install a JRE)" >&2
  fi
fi

# Fashion-MNIST (the real-size dataset, configs/fashion_mnist.yaml) comes from Debian's package, never a download.
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_MNIST_DIR/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Fashion-MNIST (dataset-fashion-mnist) into $FASHION_MNIST_DIR" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "[setup] warning: $FASHION_MNIST_DIR is missing; the Fashion-MNIST configs need it" \
         "(apt-get install dataset-fashion-mnist, as root)" >&2
  fi
fi

export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
