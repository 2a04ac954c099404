"""A user's weights file: local or s3://, safetensors or a torch state dict (weights_only), wrapper prefixes and
training-checkpoint dicts undone, every mismatch one line."""

from __future__ import annotations

import pytest
import torch

from interp_ray.errors import UserError
from interp_ray.models import build_model, load_weights
from interp_ray.models.weights import align_keys


def _reference(seed: int = 0, num_classes: int = 4):
    from user_models import build

    torch.manual_seed(seed)
    net = build(num_classes=num_classes)
    with torch.no_grad():   # non-default BatchNorm statistics, so a skipped buffer would show
        net.features[4].running_mean.uniform_(-1, 1)
        net.features[4].running_var.uniform_(0.5, 2)
    return net.eval()


def _fresh(num_classes: int = 4):
    torch.manual_seed(99)
    return build_model("user_models:build", num_classes=num_classes, image_size=16).eval()


def _same(model, ref) -> bool:
    x = torch.rand(2, 3, 16, 16)
    return torch.allclose(model(x), ref(x), atol=1e-6)


@pytest.mark.parametrize("wrap", ["module.", "model.", "net.", "module.model.", "_orig_mod.", ""])
def test_a_state_dict_with_a_wrapper_prefix_loads(tmp_path, wrap):
    ref = _reference()
    torch.save({wrap + k: v for k, v in ref.state_dict().items()}, tmp_path / "w.pt")
    model = _fresh()
    assert not _same(model, ref)
    digest = load_weights(model.net, tmp_path / "w.pt")
    assert _same(model, ref) and len(digest) == 64


def test_safetensors_and_a_training_checkpoint_dict(tmp_path):
    from safetensors.torch import save_file

    ref = _reference(1)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = _fresh()
    load_weights(model.net, tmp_path / "w.safetensors")
    assert _same(model, ref)
    torch.save({"epoch": 7, "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "c.ckpt")
    model = _fresh()
    load_weights(model.net, tmp_path / "c.ckpt")
    assert _same(model, ref)


def test_a_batchnorm_counter_missing_from_an_old_file_is_harmless(tmp_path):
    ref = _reference(2)
    torch.save({k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pt")
    model = _fresh()
    load_weights(model.net, tmp_path / "w.pt")
    assert _same(model, ref)


def test_key_mismatches_name_the_first_missing_and_unexpected(tmp_path):
    state = dict(_reference().state_dict())
    state["extra.weight"] = state.pop("head.weight")
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"^weights .*w.pt do not fit model 'x': 1 missing \(first 'head.weight'\), "
                                        r"1 unexpected \(first 'extra.weight'\) key\(s\)$") as e:
        load_weights(_fresh().net, tmp_path / "w.pt", what="model 'x'")
    assert "\n" not in str(e.value)


def test_a_class_count_mismatch_names_the_parameter_and_both_shapes(tmp_path):
    torch.save(_reference(num_classes=10).state_dict(), tmp_path / "w.pt")
    model = _fresh(num_classes=4)
    with pytest.raises(UserError, match=r"'head.weight' is \(10, 16\) in the file but \(4, 16\) in the model; a class "
                                        r"count of 10\? set num_classes") as e:
        load_weights(model.net, tmp_path / "w.pt", num_classes=4)
    assert "\n" not in str(e.value)


def test_unsafe_damaged_and_missing_files_are_one_line(tmp_path):
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")    # a whole module: refused by weights_only
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 12)
    torch.save({"epoch": 3, "lr": torch.tensor(0.1)}, tmp_path / "nostate.pt")
    cases = {"pickled.pt": "cannot be read as a state dict with weights_only=True",
             "broken.pt": "cannot be read as a state dict with weights_only=True",
             "broken.safetensors": "is not a valid safetensors file",
             "nostate.pt": "holds no state dict",
             "missing.pt": "does not exist"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=message) as e:
            load_weights(_fresh().net, tmp_path / name)
        assert "\n" not in str(e.value), name


def test_prefixes_are_stripped_only_when_that_makes_keys_fit():
    expected = {"model.fc.weight", "fc.bias"}
    state = {"module.model.fc.weight": 1, "module.fc.bias": 2}
    assert set(align_keys(state, expected)) == {"model.fc.weight", "fc.bias"}   # "model." is the net's own name


def test_weights_from_s3(s3, tmp_path):
    from interp_ray.storage import filesystem

    _, bucket = s3
    ref = _reference(3)
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "w.pt")
    fs, path = filesystem(f"s3://{bucket}/models/w.pt")
    with fs.open_output_stream(path) as out:
        out.write((tmp_path / "w.pt").read_bytes())
    model = _fresh()
    load_weights(model.net, f"s3://{bucket}/models/w.pt")
    assert _same(model, ref)
    with pytest.raises(UserError, match="does not exist"):
        load_weights(model.net, f"s3://{bucket}/models/none.pt")
