"""Adding a method is one class (plus its config): a method defined and registered here, in the test module, and
nowhere else, is explained in-process, through the CLI, through the HTTP API and through Ray Data (on workers
that never import it), passes the conformance suite by one import (``interp_ray.testing.conformance``), and runs as
a stage of the main job (a Stage object here, with its own YAML file beside this one, found by the engine because the
pipeline config names it) — with no edit to any other file (no module list, no table of methods or stages, no
constructor convention to teach). A learned plug-in provides its own
specimen, and the suite fails a plug-in that breaks a clause. What the consumers show of it is what it declares: the
CLI prints its ``summary`` and writes its ``draw`` (with its ``Drawing`` parameters), serving draws the same picture
and flags it ``slow``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from interp_ray.claims import Claim, Finding
from interp_ray.explainers import Explainer, Explanation
from interp_ray.explainers.base import EXPLAINERS
from interp_ray.testing.conformance import (Built, ConformanceSuite, Workshop, check_bad_input, check_batch_invariance,
                                            check_determinism, check_ray_data, explain_through_ray_data)
from jobs.pipeline import JobRef, Stage


class StrongestUnitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top: int = Field(3, ge=1, le=64, description="how many units to report")


class StrongestUnitsDrawing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: int = Field(1, ge=1, le=16, description="pixels per unit")


class StrongestUnits(Explainer):
    """The classifier's most active units of its penultimate layer, for its prediction (a plug-in's method)."""

    name: ClassVar[str] = "plugin_strongest_units"
    needs = frozenset({"activations"})
    produces = frozenset({"attributes"})
    slow = True   # not really: to see serving take its async default from the method
    Params = StrongestUnitsParams
    Drawing = StrongestUnitsDrawing

    def __init__(self, model, *, class_names=None):
        self.model, self.class_names = model, class_names

    def layers(self) -> list[str]:
        return ["relu3"]

    def explain(self, batch, params=None):
        p = self.parse_params(params)
        acts = np.asarray(batch["relu3"])
        out = []
        for a, c in zip(acts, np.asarray(batch["prediction"])):
            top = np.argsort(-a, kind="stable")[:p.top]
            out.append(Explanation(label=int(c), method=self.name,
                                   attributes={f"unit_{j}": round(float(a[j]), 6) for j in top}))
        return out

    def summary(self, explanation):
        return f"strongest units for class {explanation.label}: {' '.join(explanation.attributes)}"

    def draw(self, image, explanation, **drawing):
        """A grey strip, one ``scale``-wide block per reported unit, its grey level the unit's index: PNG bytes."""
        import io

        from PIL import Image

        scale = self.parse_drawing(drawing).scale
        units = [int(name.split("_")[1]) for name in explanation.attributes]
        strip = np.repeat(np.asarray([units], dtype=np.uint8), scale, axis=1)
        buf = io.BytesIO()
        Image.fromarray(strip, mode="L").save(buf, format="PNG")
        return buf.getvalue()


def units_drawn(png: bytes, scale: int) -> list[int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        row = np.asarray(im)[0]
    assert len(row) % scale == 0
    return [int(v) for v in row[::scale]]


def registered():
    """The plug-in in the registry while a test needs it (not for the whole session: the repository's suite over the
    registry must not see a method that only this module defines)."""
    mp = pytest.MonkeyPatch()
    mp.setitem(EXPLAINERS._items, StrongestUnits.name, StrongestUnits)
    return mp


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    mp = registered()
    try:
        yield Built(StrongestUnits.name, Workshop(tmp_path_factory.mktemp("plugin")))
    finally:
        mp.undo()


class TestThePluginConforms(ConformanceSuite):
    """The conformance suite on the plug-in, by one import: every clause, Ray Data included (its workers never
    import this module; the suite ships it by value)."""

    method = StrongestUnits.name

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def plugin_registered(cls):
        mp = registered()
        yield
        mp.undo()


def test_the_plugin_is_in_the_registry_and_explains_what_it_says(plugin):
    import torch

    from interp_ray.explainers import explainer_names

    assert StrongestUnits.name in explainer_names()
    got = plugin.session.explain(plugin.images, params={"top": 2})
    with torch.no_grad():
        acts = plugin.classifier.model.activations(torch.from_numpy(plugin.images), ["relu3"], with_logits=True)
    for e, a, logits in zip(got, acts["relu3"].numpy(), acts["logits"]):
        assert e.label == int(logits.argmax())
        assert list(e.attributes) == [f"unit_{j}" for j in np.argsort(-a, kind="stable")[:2]]


def test_the_cli_prints_the_plugins_summary_and_writes_its_picture(plugin, tmp_path, capsys):
    from PIL import Image

    from jobs.common import run_main
    from jobs.explain import main, read_image

    png = tmp_path / "input.png"
    Image.fromarray((plugin.images[0, 0] * 255).round().astype(np.uint8)).save(png)
    want = plugin.session.explain(read_image(str(png), plugin.session.model)[None], params={"top": 4})[0]
    picture = tmp_path / "units.png"
    assert run_main(main, [plugin.name, "--checkpoint", str(plugin.classifier_path), str(png), "--param", "top=4",
                           "--picture", str(picture), "--draw", "scale=3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{png}: strongest units for class {want.label}: {' '.join(want.attributes)}"
    assert out[1] == f"  picture: {picture}"
    assert units_drawn(picture.read_bytes(), 3) == [int(u.split("_")[1]) for u in want.attributes]
    # its drawing parameters are its own: a field it lacks is one line, exit 2, before any work
    assert run_main(main, [plugin.name, "--checkpoint", str(plugin.classifier_path), str(png), "--picture",
                           str(picture), "--draw", "colour=red"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--draw" in err[0] and "colour" in err[0], err


def test_serving_answers_with_the_plugins_json_picture_and_slow_flag(plugin):
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import ExplainerService, LocalBackend
    from serving_helpers import asgi_client

    service = ExplainerService({"checkpoint": str(plugin.classifier_path), "methods": [plugin.name],
                                "token_env": "INTERP_RAY_TEST_UNSET_TOKEN"})
    backend = LocalBackend(service)
    want = plugin.session.explain(plugin.images[:1], params={"top": 5})[0]
    with asgi_client(make_api(backend, JobRunner(backend=backend), service.args, token="")) as client:
        meta = client.get(f"/v1/methods/{plugin.name}").json()
        assert meta["slow"] is True  # from the method's declaration; slow_methods not configured
        resp = client.post(f"/v1/explain/{plugin.name}", json={"tensor": plugin.images[:1].tolist(),
                                                                "params": {"top": 5}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["explanations"][0]["attributes"] == want.attributes
        pic = client.post(f"/v1/explain/{plugin.name}/picture", json={"tensor": plugin.images[0].tolist(),
                                                                      "params": {"top": 5}})
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/png", pic.text[:200]
        assert units_drawn(pic.content, 1) == [int(u.split("_")[1]) for u in want.attributes]


class BatchScaled(StrongestUnits):
    """A broken plug-in: it scales each row's units by the batch's largest, so a row's answer depends on its batch."""

    name: ClassVar[str] = "plugin_batch_scaled"

    def explain(self, batch, params=None):
        acts = np.asarray(batch["relu3"])
        return super().explain({**batch, "relu3": acts / acts.max()}, params)


class Jittery(StrongestUnits):
    """A broken plug-in: random noise in its scores, so it does not repeat itself."""

    name: ClassVar[str] = "plugin_jittery"

    def explain(self, batch, params=None):
        acts = np.asarray(batch["relu3"])
        return super().explain({**batch, "relu3": acts + np.random.default_rng().random(acts.shape)}, params)


@pytest.mark.parametrize(("broken", "fails", "holds"), [(BatchScaled, check_batch_invariance, check_determinism),
                                                         (Jittery, check_determinism, check_bad_input)])
def test_the_suite_fails_a_method_that_breaks_its_clause(broken, fails, holds, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(EXPLAINERS._items, broken.name, broken)
        b = Built(broken.name, Workshop(tmp_path_factory.mktemp("broken")))
        with pytest.raises(AssertionError):
            fails(b)
        holds(b)  # the method is otherwise sound: the failure is that clause's


# --------------------------------------------------------------------------- a learned plug-in and its specimen


class NearestMean(Explainer):
    """How far the input's penultimate activations are from each class's mean over the data it was fitted on (a
    learned plug-in: its state is the class means, and it provides its own specimen)."""

    name: ClassVar[str] = "plugin_nearest_mean"
    needs = frozenset({"activations"})
    produces = frozenset({"attributes"})
    learned = True

    def __init__(self, means: np.ndarray | None = None, class_names=None):
        self.means, self.class_names = means, class_names

    def layers(self) -> list[str]:
        return ["relu3"]

    def fit(self, batch, **_):
        acts, labels = np.asarray(batch["relu3"], np.float32), np.asarray(batch["label"])
        self.means = np.stack([acts[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
        return self

    def explain(self, batch, params=None):
        self.parse_params(params)
        dist = np.linalg.norm(np.asarray(batch["relu3"])[:, None, :] - self.means[None], axis=2)
        return [Explanation(label=int(c), method=self.name,
                            attributes={f"class_{k}": round(float(d[k]), 5) for k in range(len(d))})
                for d, c in zip(dist, np.asarray(batch["prediction"]))]

    def save(self, path: str) -> str:
        import torch

        from interp_ray.checkpoint import save_checkpoint

        return save_checkpoint(path, kind="explainer", config={"explainer": self.name, "class_names": self.class_names},
                               state_dict={"means": torch.from_numpy(self.means)})

    @classmethod
    def load(cls, path: str, **_) -> NearestMean:
        from interp_ray.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path, kind="explainer")
        return cls(ckpt.state_dict["means"].numpy(), ckpt.config.get("class_names"))

    @classmethod
    def specimen(cls, path, classifier) -> str:
        """Fitted on the first 100 digits training images through the classifier."""
        from interp_ray.activations import ActivationExtractor
        from interp_ray.data import load_dataset

        batch = load_dataset("digits", "train").get_batch(np.arange(100))
        return cls(class_names=None).fit({**ActivationExtractor(str(classifier), ["relu3"])(batch),
                                          "label": batch["label"]}).save(str(path))


class TestALearnedPluginConforms(ConformanceSuite):
    """A learned plug-in passes the same suite, save/load included, from the specimen it defines."""

    method = NearestMean.name

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def plugin_registered(cls):
        mp = pytest.MonkeyPatch()
        mp.setitem(EXPLAINERS._items, NearestMean.name, NearestMean)
        yield
        mp.undo()

    def test_its_specimen_is_what_it_explains_with(self, subject):
        assert subject.checkpoint is not None and subject.session.explainer.means.shape[0] == 10


@pytest.mark.ray
def test_the_plugin_runs_on_ray_data_workers_that_never_imported_it(plugin, ray_session, tmp_path):
    """The Ray Data actors do not import this test module (it is not on their path, and no entry point names it):
    the job ships the class the driver resolved, by value, as Ray does for a class defined in a driver script. Without
    that, the workers cannot find it: the suite's by-value shipping is what makes the plug-in's Ray Data clause pass."""
    import sys

    import ray.cloudpickle

    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    try:
        check_ray_data(plugin, explain_through_ray_data(plugin.kind, [plugin], tmp_path)[plugin.name])
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)


# --------------------------------------------------------------------------- and a stage of the main job
# The plug-in's stage, defined here and not in jobs/: its job config, run body, report section and claim, gathered in
# one Stage object that a pipeline config names (``stages: [test_plugin_method:STRONGEST_UNITS_STAGE]``).

STRONGEST_UNITS_CONFIG = Path(__file__).with_name("plugin_strongest_units.yaml")   # the stage's own YAML file


class StrongestUnitsJob(BaseModel):
    """The plug-in stage's job config (its own YAML file, as every stage has)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str                    # the classifier it explains
    images: int = Field(4, ge=1)       # the first digits test images
    top: int = Field(2, ge=1)


def run_strongest_units(cfg, ctx) -> dict:
    from interp_ray.checkpoint import load_classifier
    from interp_ray.data import load_dataset
    from interp_ray.session import ExplainSession

    _, job = ctx.job(cfg, StrongestUnitsJob)
    images = load_dataset("digits", "test").get_batch(np.arange(job.images))["image"]
    got = ExplainSession.build(StrongestUnits.name, load_classifier(job.checkpoint)).explain(images,
                                                                                           params={"top": job.top})
    return {"top": job.top, "rows": [{"label": e.label, "units": list(e.attributes)} for e in got], "seconds": 0.0}


def report_strongest_units(result: dict, root: Path) -> list[str]:
    return ["## Strongest units", ""] + [f"- class {r['label']}: {', '.join(r['units'])}" for r in result["rows"]]


def units_as_asked(result: dict) -> Finding:
    counts = sorted({len(set(r["units"])) for r in result["rows"]})
    return Finding(f"{', '.join(map(str, counts))} distinct units an image", "digits",
                   "met" if counts == [result["top"]] else "not met",
                   f"every explanation names top = {result['top']} distinct units")


STRONGEST_UNITS_STAGE = Stage(StrongestUnits.name, run_strongest_units, job=f"{__name__}:StrongestUnitsJob",
                              default=JobRef(config=str(STRONGEST_UNITS_CONFIG)), report=report_strongest_units,
                              claims=(Claim("Strongest units 1", "each explanation names `top` distinct units", "—",
                                            StrongestUnits.name, units_as_asked),))


def test_the_plugin_stage_is_found_by_the_config_and_runs_in_a_pipeline_run(plugin, tmp_path):
    """The engine's scan takes the stage the config names; ``run`` checks, runs and reports it as it does its own
    stages, with its report section and its claim row in report.md and results.json. A config that does not name it
    has no such stage: naming it adds it to that run only."""
    import json

    from jobs.pipeline import PipelineConfig, load_stages, run, selected_stages

    out = tmp_path / "out"
    cfg = PipelineConfig.model_validate({
        "output_dir": str(out), "stages": [f"{__name__}:STRONGEST_UNITS_STAGE"],
        StrongestUnits.name: {"config": str(STRONGEST_UNITS_CONFIG),
                              "set": {"checkpoint": str(plugin.classifier_path), "top": 3}}})
    assert list(cfg.registry())[-1] == StrongestUnits.name and StrongestUnits.name in selected_stages(cfg, None)
    assert StrongestUnits.name not in load_stages() and StrongestUnits.name not in PipelineConfig().registry()

    report = Path(run(cfg, only=[StrongestUnits.name])).read_text()
    want = plugin.session.explain(plugin.images[:3], params={"top": 3})   # the file's 3 images, the entry's top 3
    assert "## Strongest units" in report
    for e in want:
        assert f"- class {e.label}: {', '.join(e.attributes)}" in report
    results = json.loads((out / "results.json").read_text())
    assert results["kinds"] == {StrongestUnits.name: StrongestUnits.name}
    (row,) = [c for c in results["claims"] if c["claim"] == "Strongest units 1"]
    assert row["verdict"] == "met" and row["ours"] == "3 distinct units an image"
    assert "| Strongest units 1 | each explanation names `top` distinct units | — | 3 distinct units an image |" \
           in report


def test_a_stage_name_that_is_not_a_stage_is_one_line_naming_the_field(tmp_path):
    from interp_ray.config import load_config
    from interp_ray.errors import UserError
    from jobs.pipeline import PipelineConfig

    for spec, says in ((f"{__name__}:StrongestUnitsJob", "not a jobs.pipeline.Stage"),
                       (f"{__name__}:NO_SUCH_STAGE", "has no 'NO_SUCH_STAGE'"),
                       ("no_such_module_here:STAGE", "cannot import"), ("just_a_module", "not module:attr")):
        path = tmp_path / "pipeline.yaml"
        path.write_text(f"stages: [{spec!r}]\n")
        with pytest.raises(UserError, match="stages") as e:
            load_config(PipelineConfig, str(path))
        assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
