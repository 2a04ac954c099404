"""``interp-ray --help``: every command with its few words, read from the job module's docstring without
importing the jobs (which import torch and Ray); an unknown command is exit 2 with one line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from jobs.cli import commands, main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command_with_its_docstring_summary(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in out if line.startswith("  ")}
    COMMANDS = commands()
    assert set(listed) == set(COMMANDS)
    for command, module in COMMANDS.items():
        path = REPO / module.replace(".", "/")   # a module, or a package (its __init__ has the doc)
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        doc = ast.get_docstring(ast.parse(path.read_text()))
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


def test_import_model_then_layers_on_a_users_module(tmp_path, capsys):
    """From a `.pt` state dict (DDP's `module.` prefix) to a checkpoint, then `layers` on spec and checkpoint."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from user_models import build

    torch.manual_seed(0)
    original = build(num_classes=3).eval()
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, tmp_path / "w.pt")
    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\n")
    out = tmp_path / "ckpt"
    assert main(["import-model", "user_models:build", "--weights", str(tmp_path / "w.pt"), "--classes",
                 str(tmp_path / "classes.txt"), "--input-size", "16", "--mean", "0.5", "--std", "0.25",
                 "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "imported user_models:build: input 3×16×16, 3 classes, mean [0.5, 0.5, 0.5] std [0.25, 0.25, 0.25]" in said
    loaded = load_classifier(out)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(loaded.model(x), original((x - 0.5) / 0.25), atol=1e-6)
    assert loaded.class_names == ["cat", "dog", "fox"]

    for target in (["user_models:build", "--input-size", "16", "--weights", str(tmp_path / "w.pt"),
                    "--option", "num_classes=3"], [str(out)]):
        assert main(["layers", *target]) == 0
        lines = capsys.readouterr().out.splitlines()
        rows = {line.split()[0]: line.split() for line in lines if line and not line.startswith(" ")}
        assert rows["features"][1:] == ["Sequential", "16×8×8", "last_maps,", "saliency"]
        assert rows["features.0"][1:3] == ["Conv2d", "8×16×16"] and rows["head"][1:] == ["Linear", "3"]
        assert rows["pool"][1:] == ["AdaptiveAvgPool2d", "16×1×1", "penultimate"]
        assert "  saliency     features (16×8×8)" in lines and "input 3×16×16, 3 classes; roles:" in lines


def test_layers_says_when_a_role_is_missing(capsys):
    assert main(["layers", "user_models:MLP", "--input-size", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  saliency     none: no layer of this model outputs a spatial map") for line in lines)
    assert "  penultimate  body.2 (16)" in lines


def test_model_commands_refuse_bad_input_with_exit_2_and_one_line(tmp_path, capsys):
    import torch
    from user_models import build

    torch.save(build(num_classes=10).state_dict(), tmp_path / "w10.pt")
    cases = {
        "cannot import 'nope_pkg'": ["layers", "nope_pkg:build"],
        "is not a torchvision classification model": ["layers", "torchvision:resnet19"],
        "needs timm": ["layers", "timm:convnext_tiny"],
        "'head.weight' is (10, 16) in the file but (4, 16)": ["import-model", "user_models:build", "--weights",
                                                              str(tmp_path / "w10.pt"), "--input-size", "16",
                                                              "--output", str(tmp_path / "c")],
        "does not exist": ["import-model", "user_models:build", "--weights", str(tmp_path / "none.pt"), "--output",
                           str(tmp_path / "c")],
        "mean 'a,b': give numbers": ["layers", "digits_cnn", "--mean", "a,b"],
        "--std '1,x': give numbers": ["layers", "digits_cnn", "--std", "1,x"],
        "--option 'depth': expected KEY=VALUE": ["layers", "digits_cnn", "--option", "depth"],
        "is a checkpoint": ["layers", str(tmp_path), "--option", "x=1"],
    }
    (tmp_path / "config.json").write_text("{}")
    for message, argv in cases.items():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "c").exists()
