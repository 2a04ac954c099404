"""The construction adapter and the service's batches, without Ray or HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import BaseModel
from serving_helpers import digit_images

from interp_ray.checkpoint import load_classifier
from interp_ray.explainers import EXPLAINERS, explainer_names
from interp_ray.explainers.base import Explainer, Explanation
from serving.service import ExplainerService, Row, SkipMethod, serve_session


def rows(images: np.ndarray, targets=None, params=None) -> list[Row]:
    targets = [-1] * len(images) if targets is None else targets
    return [Row(image=img, target=t, params=dict(params or {})) for img, t in zip(images, targets)]


# --------------------------------------------------------------------------- every registered method is served


def test_every_registered_method_is_served_or_skipped_with_a_reason(service):
    assert set(service.explainers) | set(service.skipped) == set(explainer_names())
    # Every method is served, the learned ones from their checkpoints, but the video captioner: this digits
    # layout has no captioner checkpoint (one over a scenes classifier is served below).
    assert {"flint", "interpnet", "cnn_inte", "feature_inversion", "gradcam"} <= set(service.explainers)
    assert set(service.skipped) == {"semantic"}, service.skipped
    assert "explainer_checkpoints.semantic" in service.skipped["semantic"]
    for name in service.explainers:
        assert service.method_metadata(name)["routes"]["explain"] == f"/v1/explain/{name}"
    for name, why in service.skipped.items():
        assert name in why and why


# --------------------------------------------------------------------------- the video captioner over an image


@pytest.fixture(scope="module")
def scenes_service(semantic_checkpoints):
    return ExplainerService({"checkpoint_dir": semantic_checkpoints["checkpoint_dir"], "classifier": "scenes",
                             "methods": ["semantic", "gradcam"]})


def scene_frames(n: int = 3) -> np.ndarray:
    """The frames of ``n`` one-frame scene clips (N × 3 × 32 × 32), as the captioner's clips are generated."""
    from interp_ray.data.scenes import load_scene_clips

    return load_scene_clips("test", n=n, frames=1, size=32).get_batch(np.arange(n))["clip"][:, 0]


def test_the_captioner_captions_an_image_as_a_one_frame_clip(scenes_service, semantic_checkpoints):
    from interp_ray.activations import ActivationExtractor
    from interp_ray.activations import clip_items
    from interp_ray.data.scenes import load_scene_videos
    from interp_ray.explainers.semantic.explainer import SemanticExplainer

    assert "semantic" in scenes_service.explainers, scenes_service.skipped
    images = scene_frames(3)
    served = scenes_service.explain_rows("semantic", rows(images))
    assert all(o.ok for o in served), [o.error for o in served]
    # The library on the same images as one-frame clips: the gap layer through ActivationExtractor, spatially
    # averaged (N × 1 × D), an all-true mask, exactly the features the captioner's training clips had.
    gap = ActivationExtractor(semantic_checkpoints["classifier"], ["gap"])({"image": images})
    feats = gap["gap"].reshape(len(images), -1)[:, None, :]
    clips = clip_items(semantic_checkpoints["classifier"], load_scene_videos("test", n=3, frames=1, size=32), "gap")
    np.testing.assert_allclose(feats, clips.features, rtol=1e-5, atol=1e-6)
    lib = SemanticExplainer.load(semantic_checkpoints["semantic"]).explain(
        {"features": feats, "mask": np.ones((3, 1), dtype=bool), "label": gap["prediction"]}, {})
    assert [o.explanation.sentence for o in served] == [e.sentence for e in lib]
    assert all(e.sentence.strip() for e in lib)
    assert [o.explanation.neurons for o in served] == [e.neurons for e in lib]
    assert [o.explanation.label for o in served] == gap["prediction"].tolist()  # the class it was shown as
    # A batch of images gets the captions each image gets alone.
    alone = [scenes_service.explain_rows("semantic", rows(images[i:i + 1]))[0].explanation.sentence for i in range(3)]
    assert alone == [e.sentence for e in lib]
    # An edit (the revision parameters) reaches the captioner.
    edited = scenes_service.explain_rows("semantic", rows(images[:1], params={"suppress": list("01234567")}))[0]
    assert edited.ok and edited.explanation.extra["edit"]["suppress"] == list(range(8))


def test_the_captioner_over_a_classifier_without_its_layer_is_skipped(semantic_checkpoints, serving_checkpoints):
    svc = ExplainerService({"checkpoint": serving_checkpoints["classifier"], "methods": ["semantic"],
                            "explainer_checkpoints": {"semantic": semantic_checkpoints["semantic"]}})
    assert "semantic" not in svc.explainers
    why = svc.skipped["semantic"]
    assert "'gap'" in why and "does not have" in why and semantic_checkpoints["semantic"] not in why


def test_the_captioner_from_another_layer_width_or_cnn_is_skipped(semantic_checkpoints, tmp_path):
    from interp_ray.explainers.semantic.explainer import SemanticExplainer

    ex = SemanticExplainer.load(semantic_checkpoints["semantic"])
    cases = {"relu3": ({"source": "scenes", "layer": "relu3"}, "32-value frame features"),  # relu3: 16 channels
             "msrvtt": ({"source": "video_features", "layer": "gap"}, "another CNN"),
             "unrecorded": ({}, "data.layer")}
    for name, (data, expected) in cases.items():
        ex.info = {"data": data} if data else {}
        ex.save(str(tmp_path / name))
        svc = ExplainerService({"checkpoint": semantic_checkpoints["classifier"], "methods": ["semantic"],
                                "explainer_checkpoints": {"semantic": str(tmp_path / name)}})
        assert "semantic" not in svc.explainers and expected in svc.skipped["semantic"], (name, svc.skipped)
    loaded = load_classifier(semantic_checkpoints["classifier"])
    with pytest.raises(SkipMethod, match="no checkpoint"):
        serve_session("semantic", loaded)


def test_model_methods_are_built_with_the_model_and_class_names(serving_checkpoints):
    loaded = load_classifier(serving_checkpoints["classifier"])
    for name in ("gradcam", "feature_inversion"):
        e = serve_session(name, loaded).explainer
        assert e.model is loaded.model
        assert e.class_names == loaded.class_names


def test_learned_method_without_checkpoint_is_skipped(serving_checkpoints):
    loaded = load_classifier(serving_checkpoints["classifier"])
    learned = explainer_names(learned=True)
    assert {"cnn_inte", "flint", "interpnet", "semantic"} <= set(learned)
    for name in learned:
        with pytest.raises(SkipMethod, match=f"{name} is learned and no checkpoint"):
            serve_session(name, loaded)


def test_flint_is_loaded_from_the_checkpoint_dir(service, serving_checkpoints):
    """The served FLINT is the checkpoint's: its answers are those of the same checkpoint loaded by the library."""
    from interp_ray.explainers.flint.explainer import FlintExplainer

    assert "flint" in service.explainers, service.skipped.get("flint")
    images = digit_images(3)
    out = service.explain_rows("flint", rows(images))
    assert all(o.ok for o in out)
    direct = FlintExplainer.load(serving_checkpoints["flint"]).explain({"image": images})
    for served, lib in zip(out, direct):
        assert (served.explanation.label, served.explanation.attributes) == (lib.label, lib.attributes)
        np.testing.assert_allclose(served.explanation.extra["phi"], lib.extra["phi"], atol=1e-6)


class _Probe(Explainer):
    """A learned method that reads activation columns (registered only inside the test below)."""

    name: ClassVar[str] = "serving_test_probe"
    needs = frozenset({"activations"})
    produces = frozenset({"attributes"})
    learned = True
    seen: ClassVar[dict[str, Any]] = {}

    def __init__(self, layers: list[str]):
        self._layers = layers

    def layers(self) -> list[str]:
        return self._layers

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "_Probe":
        cls.seen["load"] = (path, kwargs)
        return cls(layers=["relu3"])

    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | None = None) -> list[Explanation]:
        self.seen["columns"] = sorted(batch)
        return [Explanation(label=int(p), attributes={"mean": float(np.mean(a))})
                for p, a in zip(batch["prediction"], batch["relu3"])]


def test_learned_activation_method_gets_its_layers_from_the_classifier(monkeypatch, serving_checkpoints, tmp_path):
    monkeypatch.setitem(EXPLAINERS._items, _Probe.name, _Probe)
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "config.json").write_text("{}")  # _Probe.load reads nothing; serving checks it exists
    args = {"checkpoint": serving_checkpoints["classifier"], "methods": [_Probe.name, "gradient"],
            "explainer_checkpoints": {_Probe.name: str(tmp_path / "probe")}}
    svc = ExplainerService(args)
    path, kwargs = _Probe.seen["load"]
    assert path == str(tmp_path / "probe") and kwargs["classifier"] is svc.model
    images = digit_images(3)
    out = svc.explain_rows(_Probe.name, rows(images))
    assert {"relu3", "prediction", "probabilities", "image"} <= set(_Probe.seen["columns"])
    import torch

    with torch.no_grad():
        acts = svc.model.activations(torch.from_numpy(images), ["relu3"], with_logits=True)
    assert [o.explanation.label for o in out] == acts["logits"].argmax(1).tolist()
    np.testing.assert_allclose([o.explanation.attributes["mean"] for o in out],
                               acts["relu3"].mean(1).numpy(), rtol=1e-5)


def test_a_method_that_does_not_fit_the_conventions_is_skipped(monkeypatch, serving_checkpoints):
    class NeedsMore(_Probe):
        name: ClassVar[str] = "serving_test_needs_more"
        learned = False

        def __init__(self, model, *, required_option, class_names=None):  # method_options must give it
            pass

    monkeypatch.setitem(EXPLAINERS._items, NeedsMore.name, NeedsMore)
    svc = ExplainerService({"checkpoint": serving_checkpoints["classifier"], "methods": [NeedsMore.name]})
    assert NeedsMore.name in svc.skipped and "required_option" in svc.skipped[NeedsMore.name]


def test_activation_method_reading_a_missing_layer_is_skipped(monkeypatch, serving_checkpoints, tmp_path):
    class WrongLayer(_Probe):
        name: ClassVar[str] = "serving_test_wrong_layer"

        @classmethod
        def load(cls, path, **kwargs):
            return cls(layers=["gap"])  # a scenes_cnn layer; the served classifier is digits_cnn

    monkeypatch.setitem(EXPLAINERS._items, WrongLayer.name, WrongLayer)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")  # WrongLayer.load reads nothing; serving checks it exists
    svc = ExplainerService({"checkpoint": serving_checkpoints["classifier"], "methods": [WrongLayer.name],
                            "explainer_checkpoints": {WrongLayer.name: str(tmp_path / "x")}})
    assert "gap" in svc.skipped[WrongLayer.name]


def test_unknown_method_in_config_fails_at_start(serving_checkpoints):
    from interp_ray.errors import UserError

    with pytest.raises(UserError, match="nope"):
        ExplainerService({"checkpoint": serving_checkpoints["classifier"], "methods": ["nope"]})


# --------------------------------------------------------------------------- batches


# Occlusion scores differences of probabilities over batches of perturbed copies, and a batch's composition changes
# the float summation order inside the convolutions: measured up to 3e-4 apart on this model.
BATCH_TOLERANCE = {"gradient": 1e-6, "gradcam": 1e-6, "center": 0.0, "occlusion": 1e-3}


@pytest.mark.parametrize("method", sorted(BATCH_TOLERANCE))
def test_results_do_not_depend_on_the_batch(service, method):
    images = digit_images(6)
    together = service.explain_rows(method, rows(images, targets=[-1, 2, -1, 5, -1, 0]))
    alone = [service.explain_rows(method, rows(images[i:i + 1], targets=[t]))[0]
             for i, t in enumerate([-1, 2, -1, 5, -1, 0])]
    for a, b in zip(together, alone):
        assert a.explanation.label == b.explanation.label
        np.testing.assert_allclose(a.explanation.saliency, b.explanation.saliency, atol=BATCH_TOLERANCE[method])


def test_rows_with_different_params_are_explained_with_their_own(service):
    images = digit_images(4)
    mixed = rows(images[:2], params={"window": 2}) + rows(images[2:], params={"window": 4})
    out = service.explain_rows("occlusion", mixed)
    for i, o in enumerate(out):
        own = service.explain_rows("occlusion", rows(images[i:i + 1], params={"window": 2 if i < 2 else 4}))[0]
        np.testing.assert_allclose(o.explanation.saliency, own.explanation.saliency, atol=1e-3)


def test_a_bad_row_fails_alone(service):
    images = digit_images(3)
    batch = rows(images, params={"window": 4})
    batch[1] = Row(image=images[1], target=-1, params={"window": 99})  # larger than the 8×8 image
    out = service.explain_rows("occlusion", batch)
    assert [o.ok for o in out] == [True, False, True]
    assert out[1].status == 422 and "larger than the image" in out[1].error


def test_unknown_method_rows_get_404(service):
    (o,) = service.explain_rows("nope", rows(digit_images(1)))
    assert o.status == 404 and "served:" in o.error


def test_predict_matches_the_model(service):
    import torch

    images = digit_images(5)
    out = service.predict_rows(rows(images))
    with torch.no_grad():
        probs = torch.softmax(service.model(torch.from_numpy(images)), 1).numpy()
    assert [o.prediction["label"] for o in out] == probs.argmax(1).tolist()
    np.testing.assert_allclose(np.stack([o.prediction["probabilities"] for o in out]), probs, rtol=1e-5)


