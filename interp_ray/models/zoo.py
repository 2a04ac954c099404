"""The classifiers of the registry. Small CNNs have readable layer names; torchvision models keep theirs."""

from __future__ import annotations

from torch import nn

from interp_ray.errors import UserError
from interp_ray.models.base import Classifier
from interp_ray.registry import Registry

MODELS: Registry = Registry("model")


@MODELS.register("digits_cnn")
def digits_cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 32,
               hidden: int = 128, dropout: float = 0.25) -> Classifier:
    """A small CNN for 8×8 digits: two 3×3 conv blocks, one pool, two dense layers."""
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(in_channels, width, 3, padding=1))
    net.add_module("relu1", nn.ReLU())
    net.add_module("conv2", nn.Conv2d(width, 2 * width, 3, padding=1))
    net.add_module("relu2", nn.ReLU())
    net.add_module("pool", nn.MaxPool2d(2))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc1", nn.Linear(2 * width * (image_size // 2) ** 2, hidden))
    net.add_module("relu3", nn.ReLU())
    net.add_module("dropout", nn.Dropout(dropout))
    net.add_module("fc2", nn.Linear(hidden, num_classes))
    return Classifier(net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      default_layers=["relu2", "relu3"], explainer_defaults=SMALL_CNN_DEFAULTS)


# What the explainers read of digits_cnn and flint_mnist (relu2: the last conv map; pool: the block after pooling).
# Guided feature inversion: l0 = pool, l1 = relu2; blur σ = 2 px on 8×8 / 28×28 inputs. Grad-CAM: relu2.
# FLINT: Ψ on the conv block after pooling (2w×4×4 here), as the MNIST net's 32×14×14 feature block.
SMALL_CNN_DEFAULTS = {
    "feature_inversion": {"inversion_layer": "pool", "base_layer": "relu2", "blur_sigma": 2.0},
    "gradcam": {"layer": "relu2"},
    "flint": {"layers": ["pool"], "psi_activation": "leaky_relu", "decoder": "convt", "decoder_channels": [8, 16]},
}


@MODELS.register("flint_mnist")
def flint_mnist(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, dropout: float = 0.5,
                hidden: int = 128) -> Classifier:
    """The FLINT paper's MNIST / FashionMNIST predictor (``networks.py`` of the official code, PAPERS.md §3).

    conv3×3(1→16)–ReLU–conv3×3(16→32)–MaxPool2–Dropout(0.5)–ReLU gives ``relu2``, the 32×14×14 feature block FLINT's
    Ψ reads; then FC(6272→128)–ReLU (``relu3``, the dense hidden layer CNN-INTE explains)–Dropout–FC(128→10).
    """
    if image_size % 2:
        raise UserError(f"flint_mnist pools once by 2, so image_size must be even; got {image_size}")
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(in_channels, 16, 3, padding=1))
    net.add_module("relu1", nn.ReLU())
    net.add_module("conv2", nn.Conv2d(16, 32, 3, padding=1))
    net.add_module("pool", nn.MaxPool2d(2))
    net.add_module("dropout1", nn.Dropout(dropout))
    net.add_module("relu2", nn.ReLU())
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc1", nn.Linear(32 * (image_size // 2) ** 2, hidden))
    net.add_module("relu3", nn.ReLU())
    net.add_module("dropout2", nn.Dropout(dropout))
    net.add_module("fc2", nn.Linear(hidden, num_classes))
    # FLINT (the code's MNIST setting): Ψ = attr_MNIST (conv 64 + LeakyReLU) on the feature block after the last
    # ReLU; d = decode_MNIST, FC(J→2·7·7) → ConvT(2→8)+ReLU → ConvT(8→1)+ReLU.
    flint = {"layers": ["relu2"], "psi_activation": "leaky_relu", "decoder": "convt", "decoder_channels": [2, 8]}
    return Classifier(net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      default_layers=["relu2", "relu3"],
                      explainer_defaults={**SMALL_CNN_DEFAULTS, "flint": flint})


@MODELS.register("scenes_cnn")
def scenes_cnn(*, num_classes: int = 12, in_channels: int = 3, image_size: int = 64, width: int = 16,
               hidden: int = 256, dropout: float = 0.25) -> Classifier:
    """A four-block CNN for 64×64 scenes; global average pooling keeps it size-agnostic beyond the checks."""
    net = nn.Sequential()
    channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
    for i in range(4):
        net.add_module(f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], 3, padding=1))
        net.add_module(f"bn{i + 1}", nn.BatchNorm2d(channels[i + 1]))
        net.add_module(f"relu{i + 1}", nn.ReLU())
        if i < 3:
            net.add_module(f"pool{i + 1}", nn.MaxPool2d(2))
    net.add_module("gap", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc1", nn.Linear(channels[-1], hidden))
    net.add_module("relu_fc", nn.ReLU())
    net.add_module("dropout", nn.Dropout(dropout))
    net.add_module("fc2", nn.Linear(hidden, num_classes))
    return Classifier(net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      default_layers=["relu4", "relu_fc"], explainer_defaults=SCENES_CNN_DEFAULTS)


# Guided feature inversion on scenes_cnn (64×64 input, relu3 16×16×4w, relu4 8×8×8w, then global pooling):
# l1 = relu3 (16×16) rather than relu4 (8×8): an object of the scenes is 10–20 px wide, and an 8×8 grid puts a whole
# object into one or two cells. GAP (1×1) keeps no layout to invert, so l0 = relu4, the last map with spatial
# extent — the role pool5 (7×7) plays in VGG. Chosen on the val split (docs/saliency.md). Blur σ = 8 px: with the
# paper's blur scaled to 64 px (σ ≈ 3) the blurred scene alone is still classified correctly 20% of the time (the
# objects are small blobs of one colour), and then stage 2 has nothing to find; at σ = 8 the blurred image is at
# chance (8.7% vs 8.3%). FLINT: Ψ on relu3 and relu4 (the two last conv maps, sizes 2:1), the RN18-multi pattern.
SCENES_CNN_DEFAULTS = {
    "feature_inversion": {"inversion_layer": "relu4", "base_layer": "relu3", "blur_sigma": 8.0},
    "gradcam": {"layer": "relu4"},
    "flint": {"layers": ["relu3", "relu4"], "psi_activation": "relu", "decoder": "convt",
              "decoder_channels": [10, 24]},
}


def _torchvision(builder_name: str, default_layers: list[str]):
    def build(*, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
              weights_path: str | None = None) -> Classifier:
        import torchvision.models as tvm

        if in_channels != 3:
            raise UserError(f"{builder_name} takes 3-channel images, got in_channels={in_channels}")
        net = getattr(tvm, builder_name)(weights=None, num_classes=num_classes)
        if weights_path:
            load_weights_file(net, weights_path)
        return Classifier(net, num_classes=num_classes, in_channels=3, image_size=image_size,
                          default_layers=default_layers, explainer_defaults=torchvision_defaults(net))

    build.__name__ = builder_name
    build.__doc__ = f"torchvision {builder_name} (weights=None unless a local weights file is given)."
    return build


def torchvision_defaults(net: nn.Module) -> dict[str, dict]:
    """What the explainers read of a torchvision VGG or ResNet, as their papers and code do.

    VGG (guided feature inversion's own setting): l0 = pool5, l1 = the last conv5 ReLU, Grad-CAM on that ReLU.
    ResNet: l0 = layer4, l1 = its second-to-last block, Grad-CAM on layer4; FLINT on layer3 and layer4's first block
    with an upsampling decoder, as the FLINT code's ResNet-18.
    """
    import torchvision.models as tvm

    if isinstance(net, tvm.VGG):
        pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
        last_relu = max(i for i, m in enumerate(net.features[:pools[-1]]) if isinstance(m, nn.ReLU))
        return {"feature_inversion": {"inversion_layer": f"features.{pools[-1]}", "base_layer": f"features.{last_relu}"},
                "gradcam": {"layer": f"features.{last_relu}"}}
    if isinstance(net, tvm.ResNet):
        return {"feature_inversion": {"inversion_layer": "layer4", "base_layer": f"layer4.{len(net.layer4) - 2}"},
                "gradcam": {"layer": "layer4"},
                "flint": {"layers": ["layer3", "layer4.0"], "psi_activation": "relu", "decoder": "upsample",
                          "decoder_channels": [128, 128, 128, 64]}}
    return {}


def load_weights_file(net: nn.Module, path: str) -> None:
    """Load a state-dict file safely (``weights_only=True`` or safetensors; local or s3://); never downloads. Extra
    keys (e.g. an aux head) are tolerated here, as they always were for a registered torchvision model."""
    from interp_ray.models.weights import load_weights

    load_weights(net, path, allow_unexpected=True)


for _name, _layers in {
    "resnet18": ["layer3", "layer4", "avgpool"],
    "resnet50": ["layer3", "layer4", "avgpool"],
    "vgg16": ["features.29", "classifier.4"],
    "vgg19": ["features.35", "classifier.4"],
}.items():
    MODELS.register(_name)(_torchvision(_name, _layers))
