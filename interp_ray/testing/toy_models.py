"""Hand-built classifiers whose answers are known, small enough that every explainer test runs in seconds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from interp_ray.models import Classifier


class Blind(nn.Module):
    """Multiplies the input by a fixed 0/1 mask: the model cannot see where the mask is 0."""

    def __init__(self, visible: torch.Tensor):
        super().__init__()
        self.register_buffer("visible", visible.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.visible


def tiny_cnn(*, seed: int = 0, size: int = 16, classes: int = 3, visible: torch.Tensor | None = None,
             bias: bool = True) -> Classifier:
    """conv-relu-pool-conv-relu-GAP-fc on size×size RGB; ``visible`` (H×W 0/1) blinds pixels before conv1."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    if visible is not None:
        net.add_module("blind", Blind(visible))
    net.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1, bias=bias))
    net.add_module("relu1", nn.ReLU())
    net.add_module("pool1", nn.MaxPool2d(2))
    net.add_module("conv2", nn.Conv2d(8, 8, 3, padding=1, bias=bias))
    net.add_module("bn2", nn.BatchNorm2d(8))  # in eval mode an affine map; in train mode it would couple a batch
    net.add_module("relu2", nn.ReLU())
    net.add_module("gap", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(8, classes))
    with torch.no_grad():  # non-trivial running statistics, so eval vs train mode would matter
        net.bn2.running_mean.uniform_(-0.2, 0.2)
        net.bn2.running_var.uniform_(0.5, 2.0)
        if not bias:
            net.bn2.running_mean.zero_()  # keep "zero in → zero out" for the invisible-pixel axiom
            net.bn2.bias.zero_()
    return Classifier(net, num_classes=classes, in_channels=3, image_size=size).eval()


class ColourPeaks(nn.Module):
    """Class 0 = how red the reddest spot is, class 1 = how green the greenest spot is (global max pooling)."""

    def __init__(self):
        super().__init__()
        self.colour = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.peak = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            # red channel minus the others, green channel minus the others: grey background gives 0
            self.colour.weight.copy_(torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5]])[:, :, None, None])
            self.fc.weight.copy_(12.0 * torch.eye(2))

    def forward(self, x):
        return self.fc(self.flatten(self.peak(self.relu(self.colour(x)))))


def colour_model(size: int = 32) -> Classifier:
    return Classifier(ColourPeaks(), num_classes=2, in_channels=3, image_size=size).eval()


def red_green_image(size: int = 32) -> tuple[np.ndarray, tuple, tuple]:
    """Grey image, a red square on the left and a green square on the right; returns image and the two boxes."""
    img = np.full((3, size, size), 0.5, dtype=np.float32)
    red, green = (4, 10, 12, 18), (20, 10, 28, 18)  # x0, y0, x1, y1 (exclusive)
    img[:, red[1]:red[3], red[0]:red[2]] = np.array([0.9, 0.1, 0.1])[:, None, None]
    img[:, green[1]:green[3], green[0]:green[2]] = np.array([0.1, 0.9, 0.1])[:, None, None]
    return img, red, green
