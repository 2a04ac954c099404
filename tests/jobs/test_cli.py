"""``interp-ray --help``: every command with its few words, read from the job module's docstring without
importing the jobs (which import torch and Ray); an unknown command is exit 2 with one line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from jobs.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command_with_its_docstring_summary(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in out if line.startswith("  ")}
    assert set(listed) == set(COMMANDS)
    for command, module in COMMANDS.items():
        doc = ast.get_docstring(ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text()))
        assert doc.startswith(listed[command]) and len(listed[command].split()) >= 2, (command, listed[command])


def test_help_imports_no_job():
    code = "import sys; from jobs.cli import main; main(['--help']); print(sorted(m for m in ('torch', 'ray') " \
           "if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_an_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown command 'nope'")
