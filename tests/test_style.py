"""The house style, checked with the suite: `ruff check` over the repository with the rules in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    """ruff from this environment (a dev dependency), else from PATH."""
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if not found:
        pytest.fail("ruff is not installed: pip install -e '.[dev]' (scripts/test.sh does this)")
    return [found]


def test_ruff_check_passes_with_the_configured_rules():
    run = subprocess.run([*_ruff(), "check", "--output-format", "concise", str(ROOT)], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{run.stdout}" \
                                f"{run.stderr}"


def test_the_style_check_reads_the_project_configuration(tmp_path):
    """A line over the house's 120 columns is reported: the check is not vacuous."""
    bad = tmp_path / "long.py"
    bad.write_text("x = " + "1 + " * 40 + "1\n")
    run = subprocess.run([*_ruff(), "check", "--config", str(ROOT / "pyproject.toml"), "--output-format", "concise",
                          str(bad)], capture_output=True, text=True)
    assert run.returncode == 1 and "E501" in run.stdout
