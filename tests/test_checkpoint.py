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
