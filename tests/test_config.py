import pytest

from interp_ray.config import ClassifierJobConfig, load_config, parse_overrides
from interp_ray.errors import UserError


def test_shipped_configs_validate():
    for name in ("digits", "scenes"):
        cfg = load_config(ClassifierJobConfig, f"configs/{name}.yaml")
        assert cfg.data.name == name


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        load_config(ClassifierJobConfig, p)


def test_unknown_key_names_its_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(UserError, match=r"train\.epocs"):
        load_config(ClassifierJobConfig, p)


def test_unknown_dataset_lists_valid_names(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  name: imagenet\n")
    with pytest.raises(UserError, match=r"data\.name: unknown dataset 'imagenet'; valid: .*digits.*scenes"):
        load_config(ClassifierJobConfig, p)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match=r"model\.name: unknown model 'alexnet'; valid: .*digits_cnn.*resnet18"):
        load_config(ClassifierJobConfig, None, ["model.name=alexnet"])


def test_a_model_is_named_by_any_spec():
    """torchvision:/module:callable specs validate like registered names (a module is imported only when built)."""
    assert load_config(ClassifierJobConfig, None, ["model.name=user_models:build"]).model.name == "user_models:build"
    assert load_config(ClassifierJobConfig, None, ["model.name=torchvision:mobilenet_v3_small"]).model.name \
        == "torchvision:mobilenet_v3_small"
    for spec, message in (("torchvision:resnet19", r"model\.name: .*'resnet19' is not a torchvision"),
                          ("my-pkg:build", r"model\.name: .*not an import path")):
        with pytest.raises(UserError, match=message):
            load_config(ClassifierJobConfig, None, [f"model.name={spec}"])


def test_out_of_range_value_is_rejected():
    with pytest.raises(UserError, match=r"train\.epochs"):
        load_config(ClassifierJobConfig, None, ["train.epochs=0"])


def test_overrides_nest_and_parse_scalars():
    assert parse_overrides(["train.epochs=3", "data.options.n=10", "run.name=x"]) == {
        "train": {"epochs": 3}, "data": {"options": {"n": 10}}, "run": {"name": "x"}}
    cfg = load_config(ClassifierJobConfig, "configs/digits.yaml", ["train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.train.augment_shift == 1  # the file's other values survive


def test_missing_config_file():
    with pytest.raises(UserError, match="does not exist"):
        load_config(ClassifierJobConfig, "nope.yaml")


def test_checkpoint_due_every_k_and_always_the_last_epoch():
    from interp_ray.config import RunSection

    assert [e for e in range(7) if RunSection(checkpoint_every=3).checkpoint_due(e, 7)] == [2, 5, 6]
    assert [e for e in range(3) if RunSection().checkpoint_due(e, 3)] == [0, 1, 2]
