"""Layers by role, found by one probe: the saliency map, the last two maps, the penultimate vector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.models import build_model, find_roles, layers_for_role
from interp_ray.models.roles import probe


def test_resnet18_picks_layer3_at_64_and_layer4_at_224():
    small = build_model("resnet18", num_classes=5, image_size=64)
    # layer4 is 2×2 at 64×64, too coarse to point at anything: the saliency role goes one level back
    probed = probe(small.net, small.input_shape)
    assert probed.shapes["layer4"] == (512, 2, 2) and probed.shapes["layer3"] == (256, 4, 4)
    assert find_roles(small, probed=probed) == {"saliency": ["layer3"], "last_maps": ["layer3", "layer4"],
                                                "penultimate": ["avgpool"]}
    big = build_model("resnet18", num_classes=5, image_size=224)
    assert find_roles(big)["saliency"] == ["layer4"]      # 7×7: Grad-CAM's own choice


def test_a_levels_map_is_a_block_output_not_a_strided_blocks_insides():
    """ResNet-50's layer4.0.conv1/bn1 are still 14×14 at 224 (the bottleneck strides in conv2), as MobileNetV3's
    features.9.block.0 is before its strided depthwise conv: the level is the block before (layer3, features.8).
    ConvNeXt's channels-last block tensors (h×w×C) are not taken for maps."""
    import torchvision.models as tvm

    assert find_roles(tvm.resnet50(num_classes=3), (3, 64, 64))["last_maps"] == ["layer3", "layer4"]
    assert find_roles(tvm.mobilenet_v3_small(num_classes=3), (3, 64, 64))["last_maps"] == ["features.8", "features"]
    assert find_roles(tvm.convnext_tiny(num_classes=3), (3, 64, 64))["last_maps"] == ["features.5", "features"]


def test_roles_agree_with_the_registrys_hand_made_tables():
    from interp_ray.explainers.baselines import GradCAM

    for name, options in {"digits_cnn": {}, "scenes_cnn": {}, "vgg16": {"num_classes": 3, "image_size": 64}}.items():
        m = build_model(name, **options)
        roles = m.roles()
        assert roles["saliency"] == [GradCAM.defaults_for(m)["layer"]], name
        assert roles["penultimate"][0] in m.default_layers, name


def test_the_penultimate_vector_is_what_the_final_layer_reads():
    torch.manual_seed(0)
    # in-place ReLU and Dropout after the hidden layer: the ReLU (same in training and eval) is the role's layer
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((7, 7)),
                        nn.Flatten(), nn.Linear(4 * 49, 8), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(8, 3))
    roles = find_roles(net, (3, 4, 4))
    assert roles["penultimate"] == ["5"]
    # the adaptive pool blows 4×4 up to 7×7: an upsampling is not a finer map, so the saliency map stays 4×4
    assert roles["saliency"] == ["1"] and roles["last_maps"] == ["1"]


def test_a_model_without_a_spatial_map_has_no_saliency_role():
    m = build_model("user_models:MLP", image_size=8, num_classes=3)
    roles = m.roles()
    # the penultimate: the ReLU, first of the ReLU and its container body, which return the same tensor
    assert "saliency" not in roles and "last_maps" not in roles and roles["penultimate"] == ["body.2"]
    with pytest.raises(UserError, match=r"no layer of this model outputs a spatial map larger than 1×1 at input "
                                        r"3×8×8, so it has no 'saliency' layer and a saliency method "
                                        r"cannot apply") as e:
        layers_for_role(m, "saliency")
    assert "\n" not in str(e.value)
    assert layers_for_role(m, "penultimate") == ["body.2"]
    with pytest.raises(UserError, match="unknown role 'head'; valid: saliency, last_maps, penultimate"):
        layers_for_role(m, "head")


def test_a_penultimate_computed_outside_any_module_is_reported():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    roles = find_roles(Functional(), (3, 9, 9))
    assert roles["saliency"] == ["conv"] and "penultimate" not in roles
    with pytest.raises(UserError, match="computed outside any module"):
        layers_for_role(Functional(), "penultimate", (3, 9, 9))


def test_the_probe_leaves_the_model_as_it_was():
    m = build_model("user_models:build", image_size=16).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    find_roles(m)
    assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # BN stats untouched
    assert sum(len(mod._forward_hooks) for mod in m.modules()) == 0
