import json

import pytest
import torch

from interp_ray.checkpoint import load_classifier, read_checkpoint, save_checkpoint
from interp_ray.errors import UserError


def test_roundtrip_gives_identical_outputs(digits_checkpoint):
    loaded = load_classifier(digits_checkpoint)
    loaded2 = load_classifier(f"file://{digits_checkpoint}")  # the pyarrow URI path reads the same
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.model(x), loaded2.model(x))
    assert loaded.digest == loaded2.digest and len(loaded.digest) == 64
    assert loaded.class_names == [str(i) for i in range(10)]
    assert not loaded.model.training


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        load_classifier(tmp_path / "nothing")


def test_corrupt_weights_and_config(digits_checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(digits_checkpoint, bad)
    (bad / "weights.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="weights cannot be read"):
        load_classifier(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_classifier(bad)


def test_wrong_kind_is_refused(tmp_path):
    save_checkpoint(tmp_path / "e", kind="explainer", config={}, state_dict={"w": torch.zeros(2)})
    with pytest.raises(UserError, match="not a 'classifier'"):
        read_checkpoint(tmp_path / "e", kind="classifier")


def test_failed_save_keeps_the_old_checkpoint(digits_checkpoint):
    before = {p.name: p.read_bytes() for p in digits_checkpoint.iterdir()}
    with pytest.raises(FileNotFoundError):  # fails after weights were written into the new directory
        save_checkpoint(digits_checkpoint, kind="classifier", config={}, state_dict={"w": torch.zeros(2)},
                        files={"no/such/dir": b"x"})
    assert {p.name: p.read_bytes() for p in digits_checkpoint.iterdir()} == before
    assert not [p for p in digits_checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_config_records_what_to_build(digits_checkpoint):
    cfg = json.loads((digits_checkpoint / "config.json").read_text())
    assert cfg["kind"] == "classifier" and cfg["model"]["name"] == "digits_cnn"


def test_content_digest_is_the_content_not_the_place(digits_checkpoint, tmp_path):
    import shutil

    from interp_ray.checkpoint import content_digest

    copy = tmp_path / "copy"
    shutil.copytree(digits_checkpoint, copy)
    assert content_digest(copy) == content_digest(digits_checkpoint) == content_digest(f"file://{copy}")
    (copy / "extra.bin").write_bytes(b"\x00")   # a file beyond config and weights (CNN-INTE's forests) counts
    with_extra = content_digest(copy)
    assert with_extra != content_digest(digits_checkpoint)
    (copy / "extra.bin").write_bytes(b"\x01")
    assert content_digest(copy) != with_extra
    with pytest.raises(UserError, match="no checkpoint at"):
        content_digest(tmp_path / "nothing")


# --- a user's own model: import_model -------------------------------------------------------------------------------

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _original(spec: str, num_classes: int):
    """The user's module as they have it, with non-default BatchNorm statistics so every tensor counts."""
    if spec.startswith("torchvision:"):
        import torchvision.models as tvm

        net = getattr(tvm, spec.split(":")[1])(weights=None, num_classes=num_classes)
    else:
        from user_models import build

        net = build(num_classes=num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _write(net, path, fmt: str):
    if fmt == "pt":   # as DDP's model.state_dict() gives it
        torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


@pytest.mark.parametrize("spec,size", [("torchvision:mobilenet_v3_small", 64), ("user_models:build", 16)])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_import_model_round_trips_with_identical_logits(tmp_path, spec, size, fmt):
    from interp_ray.checkpoint import import_model

    torch.manual_seed(0)
    original = _original(spec, num_classes=3)
    weights = tmp_path / f"w.{fmt}"
    _write(original, weights, fmt)
    out = tmp_path / "ckpt"
    import_model(spec, weights=weights, output=out, options={"image_size": size, **IMAGENET},
                 class_names=["cat", "dog", "fox"])
    weights.unlink()      # self-contained: nothing refers back to the original file
    loaded = load_classifier(out)
    x = torch.rand(4, 3, size, size)
    mean, std = (torch.tensor(IMAGENET[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), original((x - mean) / std), atol=1e-5)
    assert loaded.class_names == ["cat", "dog", "fox"] and loaded.model.input_shape == (3, size, size)
    text = (out / "config.json").read_text()
    cfg = json.loads(text)
    assert cfg["model"] == {"name": spec, "options": {"image_size": size, "num_classes": 3, **IMAGENET}}
    assert str(tmp_path) not in text and len(cfg["imported"]["weights_sha256"]) == 64
    # extraction's view: the layers by module path, the taps the probe chose as defaults
    acts = loaded.model.activations(x, loaded.model.default_layers)
    assert all(a.shape[0] == 4 for a in acts.values())


def test_import_model_refuses_a_wrong_class_count_in_one_line(tmp_path):
    from interp_ray.checkpoint import import_model

    torch.save(_original("user_models:build", num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"'head.weight' is \(10, 16\) in the file but \(3, 16\) in the model") as e:
        import_model("user_models:build", weights=tmp_path / "w.pt", output=tmp_path / "c",
                     options={"image_size": 16}, class_names=["a", "b", "c"])
    assert "\n" not in str(e.value) and not (tmp_path / "c").exists()
    with pytest.raises(UserError, match="2 class names but num_classes=3"):
        import_model("user_models:build", weights=tmp_path / "w.pt", output=tmp_path / "c",
                     options={"num_classes": 3}, class_names=["a", "b"])


def test_a_checkpoint_whose_module_is_not_importable_says_how_to_ship_it(tmp_path, monkeypatch):
    import sys

    from interp_ray.checkpoint import import_model

    code = tmp_path / "code"
    code.mkdir()
    (code / "shipped_net.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=2):\n"
        "    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, num_classes))\n")
    monkeypatch.syspath_prepend(str(code))
    try:
        import shipped_net

        torch.save(shipped_net.build().state_dict(), tmp_path / "w.pt")
        import_model("shipped_net:build", weights=tmp_path / "w.pt", output=tmp_path / "c", options={"image_size": 6})
    finally:
        sys.modules.pop("shipped_net", None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(code)])
    with pytest.raises(UserError, match=r"^model 'shipped_net:build': cannot import 'shipped_net' here .*runtime_env "
                                        r".*--working-dir") as e:
        load_classifier(tmp_path / "c")
    assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_the_recorded_options_name_the_parameter(digits_checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(digits_checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["options"]["num_classes"] = 7
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"^checkpoint .*bad: weights do not fit model 'digits_cnn': 'net.fc2.weight' "
                                        r"is \(10, 128\) in the file but \(7, 128\) in the model$") as e:
        load_classifier(bad)
    assert "\n" not in str(e.value)
