"""The HTTP schema follows the library's Explanation; the serve config is one Serve accepts; args fail clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from interp_ray.explainers.base import Explanation
from serving.schemas import ExplanationOut, explanation_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "serving" / "serve_config.yaml"


def test_explanation_schema_has_exactly_the_dataclass_fields():
    assert list(ExplanationOut.model_fields) == [f.name for f in dataclasses.fields(Explanation)]
    assert ExplanationOut.model_fields["label"].is_required()
    assert ExplanationOut.model_fields["saliency"].description  # field docs carried over


def test_explanation_json_validates_against_the_schema():
    e = Explanation(label=3, label_name="3", method="m", saliency=np.random.rand(4, 5).astype(np.float32),
                    attributes={"a": 0.5}, path={"level1": 2}, neurons={"7": "stripes"}, sentence="a bird",
                    extra={"p": np.float32(0.25), "weights": np.arange(3, dtype=np.float32)})
    out = ExplanationOut.model_validate(e.to_json())
    assert out.saliency == e.saliency.tolist()
    assert out.label == 3 and out.extra["p"] == 0.25


def test_a_new_dataclass_field_appears_in_the_schema():
    @dataclasses.dataclass
    class Grown(Explanation):
        """One input's explanation.

        heatmap: a second map
        """

        heatmap: np.ndarray | None = None

    model = explanation_model(Grown)
    assert "heatmap" in model.model_fields
    assert model.model_fields["heatmap"].description == "a second map"
    assert model.model_validate({"label": 1, "heatmap": [[0.5]]}).heatmap == [[0.5]]


def test_serve_config_is_valid_for_serve_deploy():
    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(cfg)
    assert cfg["http_options"]["host"] == "127.0.0.1"
    assert cfg["http_options"]["request_timeout_s"] > 0
    apps = {a["name"]: a for a in cfg["applications"]}
    assert {a["route_prefix"] for a in apps.values()} == {"/", "/scenes", "/fashion-mnist"}
    for app in apps.values():
        assert app["import_path"] == "serving.app:app"
        deps = {d["name"]: d for d in app["deployments"]}
        assert set(deps) == {"Ingress", "Explainer"}
        for d in deps.values():
            for key in ("autoscaling_config", "max_ongoing_requests", "max_queued_requests"):
                assert key in d, (d["name"], key)
        # a replica can only fill a batch it can hold
        biggest = max(b["max_batch_size"] for b in app["args"]["batching"].values())
        assert deps["Explainer"]["max_ongoing_requests"] >= biggest
    # All applications' replicas fit the 2 CPUs of a small machine (`serve run` starts a local Ray of that size).
    assert sum(d["ray_actor_options"]["num_cpus"] for a in apps.values() for d in a["deployments"]) <= 2


def test_serve_config_args_build_the_application():

    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from serving import app as app_module
    from serving.service import ServeArgs

    cfg = yaml.safe_load(CONFIG.read_text())
    for entry in cfg["applications"]:
        module, attr = entry["import_path"].split(":")
        assert module == app_module.__name__
        args = entry["args"]
        ServeArgs.model_validate(args)
        # what `serve run/deploy` does with the import path and args (binding needs no cluster and loads nothing)
        application = call_user_app_builder_with_args_if_necessary(getattr(app_module, attr), args)
        names = {application._bound_deployment.name,
                 application._bound_deployment.init_args[0]._bound_deployment.name}
        assert names == {"Ingress", "Explainer"}


def test_serve_config_serves_what_the_main_job_writes(monkeypatch, tmp_path):
    """Each application's classifier and learned methods are where configs/pipeline.yaml's stages write them, over
    the classifier each stage was trained on: no path to edit after the main job."""
    from interp_ray.config import load_config
    from jobs.pipeline import PipelineConfig
    from serving.service import ServeArgs

    monkeypatch.setenv("INTERP_RAY_ROOT", str(tmp_path))
    pipe = load_config(PipelineConfig, str(REPO / "configs" / "pipeline.yaml"))
    out = tmp_path / pipe.output_dir
    variant = pipe.interpnet.set["evaluate.variants"][0]
    trained = {  # (method, classifier whose application serves it) → where the main job writes it
        ("cnn_inte", pipe.cnn_inte.classifier): out / "cnn_inte",
        ("flint", "digits"): out / "flint",           # FLINT trains its own predictor on digits (configs/flint_digits)
        ("interpnet", pipe.interpnet.classifier): out / "interpnet" / variant,
        ("semantic", pipe.semantic.classifier): out / "semantic",  # its frame CNN; images served as one-frame clips
        ("cnn_inte", "fashion_mnist"): out / "fashion_mnist_cnn_inte",
        ("flint", "fashion_mnist"): out / "fashion_mnist_flint_posthoc"}  # post hoc: g for that very classifier
    assert pipe.ref("fashion_mnist_flint_posthoc").classifier == pipe.ref("fashion_mnist_cnn_inte").classifier \
        == "fashion_mnist"
    apps = {}
    for entry in yaml.safe_load(CONFIG.read_text())["applications"]:
        args = ServeArgs.model_validate(entry["args"])
        name = Path(args.classifier_path()).name
        assert args.classifier_path() == str(out / "checkpoints" / name)
        apps[name] = args
    assert set(apps) == set(pipe.classifiers)
    for (method, classifier), path in trained.items():
        assert method in apps[classifier].methods, (method, classifier)
        assert apps[classifier].explainer_checkpoint(method) == str(path)
    # every stage that explains the scenes classifier's images is served there (saliency), and the captioner
    assert {m["name"] for m in pipe.saliency.set["methods"]} <= set(apps[pipe.saliency.classifier].methods)
    assert "semantic" in apps["scenes"].methods
    from jobs.explain_dataset import ExplainDatasetConfig

    fm = pipe.ref("fashion_mnist_saliency")
    evaluated = {m.name for m in fm.load(ExplainDatasetConfig, smoke=False).methods}
    assert "feature_inversion" in evaluated and evaluated <= set(apps[fm.classifier].methods)


@pytest.mark.parametrize("args,fragment", [
    ({}, "checkpoint"),
    ({"checkpoint": "x", "max_body_bytes": 10}, "max_body_bytes"),
    ({"checkpoint": "x", "bogus": 1}, "bogus"),
    ({"checkpoint": "x", "batching": {"default": {"max_batch_size": 0}}}, "max_batch_size"),
])
def test_bad_args_fail_the_build_naming_the_field(args, fragment):
    from serving.app import build_app

    with pytest.raises(ValueError, match=fragment):
        build_app(args)


def test_paths_resolve_against_root_and_checkpoint_dir(monkeypatch, tmp_path):
    from serving.service import ServeArgs

    monkeypatch.setenv("INTERP_RAY_ROOT", str(tmp_path))
    a = ServeArgs(checkpoint_dir="ckpts", explainer_checkpoints={"flint": "f1", "other": "/abs/x"})
    assert a.classifier_path() == str(tmp_path / "ckpts" / "digits")
    assert a.explainer_checkpoint("flint") == str(tmp_path / "ckpts" / "f1")
    assert a.explainer_checkpoint("other") == "/abs/x"
    assert a.explainer_checkpoint("interpnet") == str(tmp_path / "ckpts" / "digits_interpnet")
    s3 = ServeArgs(checkpoint_dir="s3://bucket/ckpts", classifier="scenes")
    assert s3.classifier_path() == "s3://bucket/ckpts/scenes"
    assert s3.explainer_checkpoint("flint") == "s3://bucket/ckpts/scenes_flint"
    assert ServeArgs(checkpoint="m").explainer_checkpoint("flint") is None


def test_openapi_documents_every_route_and_the_explanation(local_api):
    spec = local_api.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/health", "/v1/methods", "/v1/methods/{method}", "/v1/predict", "/v1/explain/{method}",
                 "/v1/jobs/{method}", "/v1/jobs/{job_id}"):
        assert path in paths, path
    body = paths["/v1/explain/{method}"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/png", "image/jpeg"} <= set(body)
    assert set(spec["components"]["schemas"]["Explanation"]["properties"]) == {
        f.name for f in dataclasses.fields(Explanation)}
    assert local_api.get("/docs").status_code == 200
