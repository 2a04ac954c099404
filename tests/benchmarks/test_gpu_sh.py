"""benchmarks/gpu.sh's dry run (--device cpu, tiny sizes): every benchmark runs and every ratio line is printed."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# one line per ratio the GPU run reports: ResNet-50 extraction, feature inversion, Serve
RATIOS = ["extract | ratio_store_over_loop:", "extract | ratio_store_steady_over_loop_steady:",
          "extract | ratio_store_bytes_over_loop_bytes:", "extract | ratio_store_steady_over_bare:",
          "gfi | ratio loop/batched", "gfi | ratio network batch1/batch2", "serve | batched_vs_unbatched_rps:",
          "serve | batched_per_image_vs_unbatched_rps:", "serve | handle_batched_vs_unbatched_rps:"]
# A steady rate needs rows to arrive after the first ones; the dry run's 6 rows come as one block, so "nan" is right
STEADY = {"extract | ratio_store_steady_over_loop_steady:", "extract | ratio_store_steady_over_bare:"}


@pytest.mark.benchmark_run
def test_dry_run_prints_every_ratio():
    # a short RAY_TMPDIR: Ray's socket paths under pytest's tmp_path (/tmp/pytest-of-root/pytest-434/test_dry_run_…)
    # pass AF_UNIX's 107-byte limit once pytest's run counter reaches three digits
    with tempfile.TemporaryDirectory(prefix="gpush-", dir="/tmp") as ray_tmp:
        env = {**os.environ, "PYTHON": sys.executable, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", ray_tmp),
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ratios:" in out
    block = out.split("ratios:", 1)[1]
    for name in RATIOS:
        line = next((ln for ln in block.splitlines() if name in ln), None)
        assert line is not None, f"missing ratio {name!r} in:\n{block}"
        value = re.search(r"nan|\d+\.\d+", line.split(name, 1)[1])  # the first figure after the name
        assert value and (value.group() != "nan" or name in STEADY), line
    # same rows and columns on both sides: bytes of one order (the codecs' defaults differ: BENCHMARKS.md)
    bytes_ratio = float(re.search(r"ratio_store_bytes_over_loop_bytes: ([\d.]+)", out).group(1))
    assert 0.5 < bytes_ratio < 2.0


def test_unknown_device_is_refused():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "tpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--device must be cuda or cpu" in proc.stderr
