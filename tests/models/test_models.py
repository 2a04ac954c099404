import pytest
import torch

from interp_ray.errors import UserError
from interp_ray.models import MODELS, UnknownLayerError, build_model

SMALL = {
    "digits_cnn": dict(num_classes=10, in_channels=1, image_size=8),
    "flint_mnist": dict(num_classes=10, in_channels=1, image_size=28),
    "scenes_cnn": dict(num_classes=12, in_channels=3, image_size=64),
    "resnet18": dict(num_classes=5, image_size=64),
    "resnet50": dict(num_classes=5, image_size=64),
    "vgg16": dict(num_classes=5, image_size=64),
    "vgg19": dict(num_classes=5, image_size=64),
}


def test_registry_lists_every_model():
    assert set(SMALL) <= set(MODELS.names())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_and_default_taps(name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name]).eval()
    x = torch.rand(2, *model.input_shape)
    acts = model.activations(x, model.default_layers, with_logits=True)
    assert list(acts)[:-1] == model.resolve_layers(model.default_layers)
    assert torch.equal(acts["logits"], model(x))  # taps do not change the output
    assert acts["logits"].shape == (2, SMALL[name]["num_classes"])
    assert all(a.shape[0] == 2 for a in acts.values())


def test_patterns_resolve_in_order_without_repeats():
    m = build_model("scenes_cnn")
    assert m.resolve_layers(["conv*", "conv1"]) == ["conv1", "conv2", "conv3", "conv4"]
    assert m.resolve_layers("relu_fc") == ["relu_fc"]


def test_unknown_layer_fails_listing_valid_names():
    m = build_model("digits_cnn")
    with pytest.raises(UnknownLayerError, match=r"unknown layer 'conv9'; valid: conv1, relu1, conv2"):
        m.activations(torch.rand(1, 1, 8, 8), ["conv9"])


def test_the_input_is_a_layer_named_only_explicitly():
    from interp_ray.models.base import INPUT_LAYER

    torch.manual_seed(2)
    m = build_model("digits_cnn").eval()
    x = torch.rand(3, 1, 8, 8)
    acts = m.activations(x, [INPUT_LAYER, "relu3"], with_logits=True)
    assert list(acts) == [INPUT_LAYER, "relu3", "logits"]
    assert torch.equal(acts[INPUT_LAYER], x) and torch.equal(acts["logits"], m(x))
    assert INPUT_LAYER not in m.resolve_layers("*") and _hook_count(m) == 0


def test_unknown_default_layer_fails_at_construction():
    from interp_ray.models.base import Classifier

    with pytest.raises(UnknownLayerError):
        Classifier(torch.nn.Linear(2, 2), num_classes=2, in_channels=1, image_size=1, default_layers=["nope"])


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_never_outlive_a_call_even_when_it_raises():
    m = build_model("digits_cnn")
    m.activations(torch.rand(1, 1, 8, 8), ["conv1", "fc1"])
    assert _hook_count(m) == 0
    with pytest.raises(RuntimeError):
        m.activations(torch.rand(1, 3, 8, 8), ["conv1", "fc1"])  # wrong channels: conv1 raises mid-forward
    assert _hook_count(m) == 0


def test_activations_match_manual_forward():
    torch.manual_seed(1)
    m = build_model("digits_cnn").eval()
    x = torch.rand(3, 1, 8, 8)
    expected = m.net.relu1(m.net.conv1(x))
    assert torch.allclose(m.activations(x, "relu1")["relu1"], expected)


def test_unknown_model_and_option():
    with pytest.raises(UserError, match="unknown model 'lenet'; valid: .*digits_cnn"):
        build_model("lenet")
    with pytest.raises(UserError, match="unknown option.*depth.*valid: num_classes"):
        build_model("digits_cnn", depth=3)


def test_check_input_names_expected_shape():
    m = build_model("digits_cnn")
    with pytest.raises(UserError, match=r"N×1×8×8"):
        m.check_input(torch.rand(2, 3, 8, 8))


def test_local_weights_file_is_loaded_safely(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    ref = resnet18(weights=None, num_classes=5)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    m = build_model("resnet18", num_classes=5, weights_path=str(tmp_path / "w.pth")).eval()
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(m(x), ref.eval()(x))
    with pytest.raises(UserError, match="does not exist"):
        build_model("resnet18", weights_path=str(tmp_path / "missing.pth"))


def test_flint_mnist_is_the_papers_network():
    """FLINT's MNIST/FashionMNIST f (PAPERS.md §3): 16 and 32 3×3 filters, the 32×14×14 block, FC 6272→128→10."""
    m = build_model("flint_mnist").eval()
    acts = m.activations(torch.rand(3, 1, 28, 28), ["relu1", "relu2", "flatten", "relu3"], with_logits=True)
    assert {k: tuple(v.shape[1:]) for k, v in acts.items()} == {
        "relu1": (16, 28, 28), "relu2": (32, 14, 14), "flatten": (6272,), "relu3": (128,), "logits": (10,)}
    convs = [mod for mod in m.net if isinstance(mod, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1))]
    assert [mod.p for mod in m.net if isinstance(mod, torch.nn.Dropout)] == [0.5, 0.5]
    assert sum(p.numel() for p in m.parameters()) == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (6272 * 128 + 128) + 1290
    # dropout is active in training only: two training passes differ, two eval passes do not
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


def test_flint_mnist_gets_flints_taps_and_decoder():
    """FLINT's settings for flint_mnist (kept in FLINT's folder, by the model's registry name): Ψ on relu2 (after the
    last ReLU, not ``pool``), d = decode_MNIST."""
    from interp_ray.explainers.flint.config import FlintSection
    from interp_ray.explainers.flint.model import build_flint, resolved_flint_spec

    m = build_model("flint_mnist")
    spec = resolved_flint_spec(m, FlintSection())
    assert spec["layers"] == ["relu2"] and spec["psi_activation"] == "leaky_relu"
    assert spec["decoder"] == "convt" and spec["decoder_channels"] == [2, 8]
    flint = build_flint(m, spec).eval()
    out = flint(torch.rand(2, 1, 28, 28))
    assert out.phi.shape == (2, 25) and out.recon.shape == (2, 1, 28, 28)
    assert flint.decoder.fc.out_features == 98  # FC(J → 2×7×7)
    # a FLINT config naming a layer the network lacks fails when the architecture is resolved, before any training
    with pytest.raises(UnknownLayerError):
        resolved_flint_spec(m, FlintSection(layers=["x"]))
    assert m.arch == "flint_mnist"
