"""The learned methods take their classifier layers by role on a model interp-ray has never seen (issue 36): CNN-INTE
the penultimate vector, FLINT post hoc both last maps, InterpNET's h_0 and Dong et al.'s frame features the
penultimate vector, VIBI none. A layer named instead is checked; a name the model lacks, or a method that cannot
apply (no spatial map), is one line before any extraction or Ray start."""

from __future__ import annotations

import pytest
import torch

from interp_ray.checkpoint import import_model, load_classifier
from interp_ray.errors import UserError
from interp_ray.explainers.base import get_explainer
from interp_ray.explainers.cnn_inte import CnnInte, CnnInteConfig
from interp_ray.explainers.flint.config import FlintSection
from interp_ray.explainers.flint.model import resolved_flint_spec
from interp_ray.models import build_model


@pytest.fixture(scope="module")
def user_checkpoints(tmp_path_factory):
    """{"cnn": user_models:build at 16×16 (one spatial level, features: 16×8×8; pool → head), "mlp": user_models:MLP
    (no spatial map)}."""
    from user_models import MLP, build

    root = tmp_path_factory.mktemp("user_ckpts")
    torch.manual_seed(0)
    torch.save(build(num_classes=3).state_dict(), root / "cnn.pt")
    torch.save(MLP(image_size=8).state_dict(), root / "mlp.pt")
    import_model("user_models:build", weights=root / "cnn.pt", output=root / "cnn",
                 options={"image_size": 16, "num_classes": 3}, class_names=["a", "b", "c"])
    import_model("user_models:MLP", weights=root / "mlp.pt", output=root / "mlp", options={"image_size": 8},
                 class_names=["a", "b", "c"])
    return {"cnn": str(root / "cnn"), "mlp": str(root / "mlp")}


def test_cnn_inte_reads_the_penultimate_vector_unless_one_is_named(user_checkpoints):
    cnn, mlp = load_classifier(user_checkpoints["cnn"]), load_classifier(user_checkpoints["mlp"])
    assert CnnInte.configured_for(CnnInteConfig(), cnn).layer == "pool"
    assert CnnInte.configured_for(CnnInteConfig(), mlp).layer == "body.2"   # no map needed: a vector will do
    assert CnnInte.configured_for(CnnInteConfig(layer="features"), cnn).layer == "features"
    with pytest.raises(UserError) as e:
        CnnInte.configured_for(CnnInteConfig(layer="fc"), cnn)
    assert str(e.value).startswith("cnn_inte: cnn_inte.layer: unknown layer 'fc'; valid: ") and "\n" not in str(e.value)
    # a registered model's penultimate is the layer its shipped configs name
    assert CnnInte.defaults_for(build_model("digits_cnn", num_classes=10, in_channels=1, image_size=8)) == \
        {"layer": "relu3"}
    with pytest.raises(UserError, match="cnn_inte.layer is not set"):
        CnnInte().fit({"prediction": [0]})


def test_flint_post_hoc_reads_both_last_maps_and_refuses_a_model_without_one(user_checkpoints):
    cnn, mlp = load_classifier(user_checkpoints["cnn"]).model, load_classifier(user_checkpoints["mlp"]).model
    section = FlintSection(mode="posthoc", predictor_checkpoint=user_checkpoints["cnn"])
    assert resolved_flint_spec(cnn, section)["layers"] == cnn.roles()["last_maps"] == ["features"]  # one level
    mobilenet = build_model("torchvision:mobilenet_v3_small", num_classes=3, image_size=64)
    assert resolved_flint_spec(mobilenet, section)["layers"] == ["features.8", "features"]   # 4×4 and 2×2
    named = section.model_copy(update={"layers": ["features"]})
    assert resolved_flint_spec(cnn, named)["layers"] == ["features"]
    with pytest.raises(UserError) as e:
        resolved_flint_spec(cnn, section.model_copy(update={"layers": ["features", "fc"]}))
    assert str(e.value).startswith("flint: flint.layers: unknown layer 'fc'") and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:
        resolved_flint_spec(mlp, section)
    assert str(e.value).startswith("flint cannot explain this model: no layer of this model outputs a spatial map")
    assert "flint.layers" in str(e.value) and "\n" not in str(e.value)
    # named, a vector layer of the MLP is read without looking for a role the model does not have
    assert resolved_flint_spec(mlp, section.model_copy(update={"layers": ["body.2"]}))["layers"] == ["body.2"]


def test_the_captioners_take_the_penultimate_vector_and_vibi_no_layer(user_checkpoints):
    from interp_ray.explainers.interpnet.config import InterpNETTrainJob
    from interp_ray.explainers.semantic.config import SemanticTrainJob
    from interp_ray.explainers.vibi.config import VibiTrainJob

    cnn = load_classifier(user_checkpoints["cnn"])
    interpnet = get_explainer("interpnet")
    job = InterpNETTrainJob.model_validate({"source": {"checkpoint": user_checkpoints["cnn"]},
                                            "explainer": {"classifier": "store"}})
    with pytest.raises(UserError, match="explainer.feature_layer is not set"):
        job.store_layers()
    settled = interpnet.for_classifier(job, cnn)
    assert settled.explainer.feature_layer == "pool" and settled.explainer.columns() == ["pool", "probabilities"]
    for field, update in (("explainer.feature_layer", {"feature_layer": "fc"}),
                          ("explainer.layers", {"feature_layer": "pool", "layers": ["features", "fc"]})):
        bad = job.model_copy(update={"explainer": job.explainer.model_copy(update=update)})
        with pytest.raises(UserError, match=rf"^interpnet: {field}: unknown layer 'fc'"):
            interpnet.for_classifier(bad, cnn)

    semantic = SemanticTrainJob.model_validate({"source": {"checkpoint": user_checkpoints["cnn"]}})
    with pytest.raises(UserError, match="source.layers is not set"):
        semantic.frame_column
    assert get_explainer("semantic").for_classifier(semantic, cnn).frame_column == "pool"
    named = semantic.model_copy(update={"source": semantic.source.model_copy(update={"layers": ["features"]})})
    assert get_explainer("semantic").for_classifier(named, cnn).frame_column == "features"

    vibi = VibiTrainJob.model_validate({"source": {"checkpoint": user_checkpoints["cnn"]}})
    assert get_explainer("vibi").for_classifier(vibi, cnn) is vibi and vibi.store_layers() == ["input"]


def test_train_explainer_refuses_a_layer_before_ray_or_extraction(user_checkpoints, tmp_path, capsys):
    from jobs.common import run_main
    from jobs.train_explainer import main

    store = tmp_path / "acts"
    argv = ["--config", "configs/interpnet_scenes.yaml", "--set", f"source.checkpoint={user_checkpoints['cnn']}",
            "--set", f"source.store.root={store}"]
    assert run_main(main, argv) == 2   # the shipped config names relu2, a scenes CNN's layer
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: interpnet: explainer.feature_layer: unknown layer 'relu2'")
    assert run_main(main, [*argv, "--set", "source.layers=[features, nope]", "--set",
                           "explainer.feature_layer=features"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: interpnet: source.layers: unknown layer 'nope'"), err
    assert not store.exists()
