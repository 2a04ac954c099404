"""``interp-ray explain METHOD --checkpoint DIR image.png``: FLINT's local interpretation, JSON, other methods by
name from the registry, and bad input as exit code 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jobs.common import run_main
from jobs.explain import main


@pytest.fixture(scope="module")
def flint_checkpoint(tmp_path_factory, pinned_torch_threads, fixture_seed):
    """A briefly trained FLINT on digits (3 epochs, plain PyTorch), saved as an interp-ray checkpoint."""
    from interp_ray.explainers.flint.config import FlintJobConfig
    from interp_ray.explainers.flint.explainer import train_explainer
    from jobs.flint_inputs import flint_inputs

    cfg = FlintJobConfig.model_validate({"flint": {"relevance_samples": 200},
                                         "train": {"epochs": 3, "batch_size": 32, "lr": 0.002, "seed": fixture_seed},
                                         "scaling": {"use_gpu": False}})
    explainer, _ = train_explainer(cfg, flint_inputs(cfg))
    path = tmp_path_factory.mktemp("flint") / "ck"
    explainer.save(str(path))
    return path, explainer


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    from PIL import Image

    from interp_ray.data import load_dataset

    image = load_dataset("digits", "test").get_batch([0])["image"][0]
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray((image[0] * 255).round().astype(np.uint8), "L").save(path)
    return path, image


def test_flint_prints_the_local_interpretation(flint_checkpoint, digit_png, capsys):
    from interp_ray.data.images import decode_image

    ckpt, explainer = flint_checkpoint
    png, _ = digit_png
    assert run_main(main, ["flint", "--checkpoint", str(ckpt), str(png)]) == 0
    out = capsys.readouterr().out
    # The same explanation the library gives for the PNG's decoded pixels.
    want = explainer.explain({"image": decode_image(png.read_bytes(), 8, "L")[None]})[0]
    assert f"flint -> class {want.label} '{want.label_name}'" in out
    assert "relevant attributes (tau=2, relevance > 0.500):" in out
    printed = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("phi_"):
            printed[parts[0]] = float(parts[1])
    assert list(printed) == list(want.attributes)             # same attributes, most relevant first
    for name, value in want.attributes.items():
        assert printed[name] == pytest.approx(value, abs=1.5e-3)
    assert "+1.000" in out   # the top attribute has relevance 1 by definition
    # FLINT explains its own predictor f (no classifier given): the answer says so, with f's class
    assert f"explains the prediction of {explainer.own_predictor().about}, not the classifier's: " \
           f"{want.label_name}" in out


def test_json_tau_and_picture(flint_checkpoint, digit_png, capsys, tmp_path):
    from interp_ray.explainers.flint.plots import png_pixel_variance

    ckpt, _ = flint_checkpoint
    png, _ = digit_png
    sheet = tmp_path / "sheet.png"
    assert run_main(main, ["flint", "--checkpoint", str(ckpt), str(png), str(png), "--json", "--tau", "5",
                           "--picture", str(sheet), "--draw", "rounds=2", "--am", "n_iter=10"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["explanation"] == rows[1]["explanation"]
    e = rows[0]["explanation"]
    assert e["method"] == "flint" and e["extra"]["tau"] == 5 and len(e["extra"]["relevance"]) == 25
    assert all(v > 0.2 for v in e["attributes"].values())
    for row in rows:
        assert png_pixel_variance(row["picture"]) > 0.05


def test_other_methods_by_name(digits_checkpoint, digit_png, capsys):
    png, _ = digit_png
    assert run_main(main, ["gradient", "--checkpoint", str(digits_checkpoint), str(png)]) == 0
    out = capsys.readouterr().out
    assert "gradient -> class" in out and "saliency 8x8: peak at row" in out
    assert "explains the classifier's prediction: " in out
    assert run_main(main, ["gradient", "--checkpoint", str(digits_checkpoint), str(png), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    w = row["explanation"]["explains"]
    assert w["model"] == "classifier" and w["label"] == row["explanation"]["label"] and w["agrees"] is True


def test_option_names_the_layer_a_method_reads(digits_checkpoint, digit_png, capsys):
    """``--option layer=…`` reaches the method's constructor: Grad-CAM at relu1 (8×8) differs from its role's
    default map; a layer the model lacks is one line naming the flag."""
    png, _ = digit_png
    maps = {}
    for extra in ([], ["--option", "layer=relu1"]):
        assert run_main(main, ["gradcam", "--checkpoint", str(digits_checkpoint), str(png), "--json", *extra]) == 0
        maps[tuple(extra)] = np.asarray(json.loads(capsys.readouterr().out)[0]["explanation"]["saliency"])
    default, named = maps.values()
    assert default.shape == named.shape == (8, 8) and not np.allclose(default, named)
    assert run_main(main, ["gradcam", "--checkpoint", str(digits_checkpoint), str(png), "--option", "layer=fc9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --option layer=fc9: unknown layer 'fc9'; valid: "), err


def test_bad_input_exit_2_with_one_line(flint_checkpoint, digits_checkpoint, digit_png, tmp_path, capsys):
    ckpt, _ = flint_checkpoint
    png, _ = digit_png
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    cases = {
        "unknown explainer 'nope'; valid:": ["nope", "--checkpoint", str(ckpt), str(png)],
        "does not exist": ["flint", "--checkpoint", str(tmp_path / "none"), str(png)],
        "image file not found": ["flint", "--checkpoint", str(ckpt), str(tmp_path / "missing.png")],
        "not a decodable image": ["flint", "--checkpoint", str(ckpt), str(junk)],
        "unknown parameter(s) colour": ["flint", "--checkpoint", str(ckpt), str(png), "--param", "colour=1"],
        "invalid parameters": ["flint", "--checkpoint", str(ckpt), str(png), "--tau", "-1"],
        "--draw: invalid parameters for flint: bogus: Extra inputs are not permitted":
            ["flint", "--checkpoint", str(ckpt), str(png), "--draw", "bogus=1"],
        "has no 'tau' parameter": ["gradient", "--checkpoint", str(digits_checkpoint), str(png), "--tau", "2"],
        "holds a 'flint', not a 'classifier'": ["gradient", "--checkpoint", str(ckpt), str(png)],
    }
    for expected, argv in cases.items():
        assert run_main(main, argv) == 2, expected
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)
        assert captured.out == ""


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.explain", "flint", "--checkpoint", str(tmp_path / "no"),
                           str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: checkpoint")


def test_cnn_inte_finds_the_classifier_its_training_recorded(digits_checkpoint, digit_png, tmp_path, capsys):
    """After the main job, ``interp-ray explain cnn_inte --checkpoint outputs/pipeline/cnn_inte digit.png`` works:
    the meta-model reads the classifier's activations, and its checkpoint records which classifier (as
    jobs.fit_cnn_inte writes it); without that record, one line asks for --classifier."""
    from interp_ray.activations import ActivationExtractor
    from interp_ray.explainers.cnn_inte import CnnInte
    from jobs.explain import read_image

    png, image = digit_png
    bare = tmp_path / "bare"
    CnnInte.specimen(bare, digits_checkpoint)
    recorded = CnnInte.load(str(bare))
    recorded.info["checkpoint"] = str(digits_checkpoint)
    recorded.save(str(tmp_path / "recorded"))
    assert run_main(main, ["cnn_inte", "--checkpoint", str(tmp_path / "recorded"), str(png), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    pixels = read_image(str(png), recorded_model(digits_checkpoint))[None]
    want = recorded.explain(ActivationExtractor(digits_checkpoint, ["relu3"])({"image": pixels}))[0]
    assert row["explanation"]["path"]["level1"] == want.path["level1"]
    assert row["explanation"]["label"] == want.label
    assert row["explanation"]["extra"]["cnn_prediction"] == want.extra["cnn_prediction"]
    assert run_main(main, ["cnn_inte", "--checkpoint", str(bare), str(png)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --classifier" in err[0], err
    assert run_main(main, ["cnn_inte", "--checkpoint", str(bare), "--classifier", str(digits_checkpoint),
                           str(png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["explanation"] == row["explanation"]


def recorded_model(checkpoint):
    from interp_ray.checkpoint import load_classifier

    return load_classifier(checkpoint).model
