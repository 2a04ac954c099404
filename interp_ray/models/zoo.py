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
    dense_head(net, 2 * width * (image_size // 2) ** 2, hidden, num_classes, dropout, dropout_name="dropout")
    return Classifier(net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      default_layers=["relu2", "relu3"], arch="digits_cnn")


def dense_head(net: nn.Sequential, features: int, hidden: int, num_classes: int, dropout: float, *,
               dropout_name: str) -> None:
    """The small CNNs' head: flatten, fc1, ``relu3`` (the dense hidden layer CNN-INTE explains), dropout, fc2. The
    module names are the checkpoints' keys and the layers' names, so they stay as they were."""
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc1", nn.Linear(features, hidden))
    net.add_module("relu3", nn.ReLU())
    net.add_module(dropout_name, nn.Dropout(dropout))
    net.add_module("fc2", nn.Linear(hidden, num_classes))


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
    dense_head(net, 32 * (image_size // 2) ** 2, hidden, num_classes, dropout, dropout_name="dropout2")
    return Classifier(net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                      default_layers=["relu2", "relu3"], arch="flint_mnist")


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
                      default_layers=["relu4", "relu_fc"], arch="scenes_cnn")


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
                          default_layers=default_layers, arch=builder_name)

    build.__name__ = builder_name
    build.__doc__ = f"torchvision {builder_name} (weights=None unless a local weights file is given)."
    return build


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
