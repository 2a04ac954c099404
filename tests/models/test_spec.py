"""Model specs: registered names, torchvision builders the registry does not name, timm (absent here) and a user's
own module:callable, each wrapped with named taps and normalisation inside forward."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from interp_ray.errors import UserError
from interp_ray.models import UnknownLayerError, build_model, check_spec, parse_spec

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def test_spec_forms():
    assert parse_spec("digits_cnn").kind == "registered"
    assert (parse_spec("torchvision:mobilenet_v3_small").kind, parse_spec("torchvision:mobilenet_v3_small").target) \
        == ("torchvision", "mobilenet_v3_small")
    assert parse_spec("timm:convnext_tiny").kind == "timm"
    assert parse_spec("my_pkg.models:build").kind == "import"
    for bad in ("my-pkg:build", "pkg:build:x", ":build", "pkg:"):
        with pytest.raises(UserError, match="model ") as e:
            parse_spec(bad)
        _one_line(e)
    with pytest.raises(UserError, match=r"unknown model 'lenet'; valid: .*digits_cnn.*torchvision:NAME"):
        parse_spec("lenet")


def test_a_torchvision_builder_the_registry_does_not_name():
    torch.manual_seed(0)
    m = build_model("torchvision:mobilenet_v3_small", num_classes=5, image_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    assert m(x).shape == (2, 5) and m.num_classes == 5 and m.input_shape == (3, 64, 64)
    # its layers are its own module paths, tapped by forward hooks like a registered model's
    acts = m.activations(x, ["features.12", "classifier.1"], with_logits=True)
    assert acts["features.12"].shape == (2, 576, 2, 2) and acts["classifier.1"].shape == (2, 1024)
    assert torch.equal(acts["logits"], m(x))
    assert m.default_layers == m.resolve_layers(m.default_layers) and "classifier.1" in m.default_layers
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'features.99'; valid: features, features.0") as e:
        m.activations(x, ["features.99"])
    _one_line(e)


def test_torchvision_names_are_checked_with_a_suggestion():
    with pytest.raises(UserError, match=r"'mobilenet_v3_smal' is not a torchvision classification model; did you "
                                        r"mean mobilenet_v3_small") as e:
        check_spec("torchvision:mobilenet_v3_smal")
    _one_line(e)
    with pytest.raises(UserError, match="never downloaded"):
        build_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(UserError, match="takes 3-channel images"):
        build_model("torchvision:resnet18", in_channels=1)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_timm_without_timm_says_to_install_it():
    with pytest.raises(UserError, match=r"^model 'timm:convnext_tiny' needs timm, which is not installed here: "
                                        r"pip install timm") as e:
        build_model("timm:convnext_tiny", num_classes=3)
    _one_line(e)
    with pytest.raises(UserError, match="needs timm"):   # a config naming it fails when validated, before any job
        check_spec("timm:convnext_tiny")


def test_a_users_factory_and_class_with_their_options():
    from user_models import TinyNet

    torch.manual_seed(1)
    m = build_model("user_models:build", num_classes=5, width=4, image_size=16).eval()
    assert isinstance(m.net, TinyNet) and m.net.head.out_features == 5 and m.net.features[0].out_channels == 4
    c = build_model("user_models:TinyNet", num_classes=2, in_channels=1, image_size=12)
    assert c.input_shape == (1, 12, 12) and c.net.features[0].in_channels == 1   # the class names in_channels
    # no num_classes in the factory's signature: the probe finds the class count
    assert build_model("user_models:build_fixed", image_size=16).num_classes == 6
    # image_size reaches a builder that names it
    assert build_model("user_models:MLP", image_size=6, num_classes=3).net.body[1].in_features == 3 * 6 * 6


def test_a_users_option_mistakes_are_one_line():
    cases = {
        "user_models:build": ({"depth": 3}, r"unknown option\(s\) depth for model 'user_models:build'; valid: .*width"),
        "user_models:build_fixed": ({"num_classes": 3}, "gives 6 logits but num_classes is 3"),
        "user_models:NOT_A_MODEL": ({}, "'NOT_A_MODEL' is a int; name an nn.Module class or a factory function"),
        "user_models:nothing": ({}, "module 'user_models' has no attribute 'nothing'"),
        "os:system": ({}, "'os' is not a model library"),
        "subprocess:run": ({}, "'subprocess' is not a model library"),
        "torch.hub:load": ({}, "'torch' is not a model library"),
        "user_models:TinyNet": ({"in_channels": "rgb"}, "in_channels must be a positive integer, got 'rgb'"),
    }
    for spec, (options, message) in cases.items():
        with pytest.raises(UserError, match=message) as e:
            build_model(spec, image_size=16, **options)
        _one_line(e)


def test_an_unimportable_module_names_the_spec_and_runtime_env():
    with pytest.raises(UserError, match=r"^model 'no_such_pkg.models:build': cannot import 'no_such_pkg.models' here "
                                        r".*runtime_env .*--working-dir") as e:
        build_model("no_such_pkg.models:build")
    _one_line(e)


def test_a_module_written_by_the_user_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "my_net_mod.py").write_text(
        "from torch import nn\n"
        "def make(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        m = build_model("my_net_mod:make", num_classes=7, image_size=8)
        assert m.num_classes == 7 and m.layer_names() == ["0", "1", "2", "3"]
    finally:
        sys.modules.pop("my_net_mod", None)


def test_normalisation_happens_inside_forward_for_every_path():
    from user_models import build

    torch.manual_seed(2)
    m = build_model("user_models:build", num_classes=3, image_size=16, **IMAGENET).eval()
    ref = build(num_classes=3)
    ref.load_state_dict(m.net.state_dict())
    ref.eval()
    x = torch.rand(3, 3, 16, 16)
    mean, std = (torch.tensor(IMAGENET[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    assert torch.allclose(m(x), ref((x - mean) / std), atol=1e-6)
    assert not torch.allclose(m(x), ref(x), atol=1e-3)
    acts = m.activations(x, ["input", "features"], with_logits=True)
    assert torch.equal(acts["input"], x)        # the input layer is the pixels as given, in [0, 1]
    assert torch.allclose(acts["features"], ref.features((x - mean) / std), atol=1e-6)
    assert torch.equal(acts["logits"], m(x))
    # gradients (the saliency methods) flow through the normalisation to the pixels
    xg = x.clone().requires_grad_(True)
    m(xg)[:, 0].sum().backward()
    xr = ((x - mean) / std).requires_grad_(True)
    ref(xr)[:, 0].sum().backward()
    assert torch.allclose(xg.grad, xr.grad / std, atol=1e-5)
    # the constants follow the device/dtype but stay out of the state dict (checkpoints of old models still load)
    assert not any(k.startswith("input_") for k in m.state_dict())
    assert m.double().input_mean.dtype == torch.float64
    assert m.normalisation == {"mean": pytest.approx(IMAGENET["mean"]), "std": pytest.approx(IMAGENET["std"])}


def test_normalisation_options_on_a_registered_model_and_their_checks():
    m = build_model("digits_cnn", mean=[0.5], std=[0.25]).eval()
    ref = build_model("digits_cnn").eval()
    ref.load_state_dict(m.state_dict())
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(m(x), ref((x - 0.5) / 0.25), atol=1e-6)
    assert build_model("resnet18", num_classes=2, image_size=32, mean="imagenet", std="imagenet").normalisation \
        == {"mean": pytest.approx(IMAGENET["mean"]), "std": pytest.approx(IMAGENET["std"])}
    for options, message in (({"mean": [0.1, 0.2]}, "mean has 2 values; the model takes 1 channel"),
                             ({"std": [0.0]}, "std must be positive"),
                             ({"mean": "cifar"}, "mean 'cifar': give numbers")):
        with pytest.raises(UserError, match=message) as e:
            build_model("digits_cnn", **options)
        _one_line(e)
