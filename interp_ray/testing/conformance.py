"""The contract every method keeps, as a pytest class a method's author subclasses (the repository holds every
registered method to it in tests/explainers/test_conformance.py):

    from interp_ray.testing.conformance import ConformanceSuite

    class TestMyMethod(ConformanceSuite):
        method = "my_method"       # a registered method's name

For the method, built as every consumer builds it (``ExplainSession`` over the protocol's ``from_classifier``,
around a specimen: ``Explainer.specimen``): its explanations do not depend on the batch they are computed in, repeat
exactly, survive a save/load round trip (learned methods), refuse bad input with a ``UserError`` naming the problem,
and are the same in-process, through the CLI (``interp-ray explain``), through Ray Data (``jobs.explain_dataset``:
one job explains the first test rows with all of ``methods()`` that share a classifier, into Parquet) and through the
HTTP API that Serve runs (FastAPI app, in-process backend).

The Ray Data check needs a running Ray: the test asks for the ``ray_session`` fixture by name (a session-scoped
fixture that starts Ray and yields the ``ray`` module, as the repository's tests/conftest.py defines it), and is
marked ``ray``. A method defined outside an installed package (in the test module itself) is shipped to the Ray
workers by value, as Ray ships a driver script's classes.

This harness drives every consumer, so it imports ``jobs`` and ``serving`` (inside the checks): it sits above them,
and nothing in ``interp_ray`` imports it (tests/test_import_graph.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from interp_ray.errors import UserError

N_IMAGES = 4
# Occlusion scores differences of probabilities over batches of perturbed copies; a batch's composition changes
# the float summation order inside the convolutions (measured up to 3e-4 apart on the digits model).
ATOL = 1e-3


# --------------------------------------------------------------------------- comparing explanations


def assert_same(a: Any, b: Any, *, atol: float = 0.0, where: str = "explanation") -> None:
    """Two JSON explanations equal: the same keys and strings, numbers within ``atol`` (0: exactly)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], atol=atol, where=f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths differ"
        if a and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in a) and atol:
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=atol, err_msg=where)
            return
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, atol=atol, where=f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= atol, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def as_json(explanations) -> list[dict]:
    # Through a JSON round trip, as every consumer's output is (CLI --json, HTTP).
    return json.loads(json.dumps([e.to_json() for e in explanations]))


# --------------------------------------------------------------------------- building a method


def images_for(kind: str) -> np.ndarray:
    if kind == "scenes":
        from interp_ray.data.scenes import load_scene_clips

        return load_scene_clips("test", n=N_IMAGES, frames=1, size=32).get_batch(np.arange(N_IMAGES))["clip"][:, 0]
    from interp_ray.data import load_dataset

    return load_dataset("digits", "test").get_batch(np.arange(N_IMAGES))["image"]


class Workshop:
    """Where the classifiers (made once, when first asked for) and the methods' specimens are."""

    def __init__(self, root: Path):
        self.root, self.classifiers, self.checkpoints = Path(root), {}, {}

    def classifier(self, kind: str) -> Path:
        from interp_ray.testing.specimens import CLASSIFIERS

        if kind not in CLASSIFIERS:
            pytest.fail(f"specimen_classifier {kind!r} is not one of {sorted(CLASSIFIERS)}")
        if kind not in self.classifiers:
            CLASSIFIERS[kind](self.root / kind)
            self.classifiers[kind] = self.root / kind
        return self.classifiers[kind]

    def specimen(self, cls) -> Path | None:
        """``cls``'s specimen over its classifier (made when first asked for); None for a method with no state."""
        if cls.name not in self.checkpoints:
            kind = cls.specimen_classifier
            made = cls.specimen(self.root / f"{kind}_{cls.name}", self.classifier(kind))
            if cls.learned and not made:
                pytest.fail(f"learned method {cls.name!r}: its specimen(path, classifier) saved no checkpoint")
            self.checkpoints[cls.name] = Path(made) if made else None
        return self.checkpoints[cls.name]


class Built:
    """One method as every consumer builds it, with its inputs and where its checkpoints are."""

    def __init__(self, name: str, workshop: Workshop):
        from interp_ray.checkpoint import load_classifier
        from interp_ray.explainers import get_explainer
        from interp_ray.session import ExplainSession

        cls = get_explainer(name)
        self.name, self.cls, self.kind = name, cls, cls.specimen_classifier
        self.checkpoint = workshop.specimen(cls)
        self.classifier_path = workshop.classifier(self.kind)
        self.classifier = load_classifier(self.classifier_path)
        self.session = ExplainSession.build(name, self.classifier, str(self.checkpoint) if self.checkpoint else None)
        self.images = images_for(self.kind)


# --------------------------------------------------------------------------- the contract, one check per clause
# Plain functions over a built method, so a test may also hold a method to a clause on its own.


def check_batch_invariance(b: Built) -> None:
    together = as_json(b.session.explain(b.images))
    alone = [as_json(b.session.explain(b.images[i:i + 1]))[0] for i in range(len(b.images))]
    assert len(together) == len(b.images)
    for i, (t, a) in enumerate(zip(together, alone)):
        assert_same(t, a, atol=ATOL, where=f"{b.name} image {i}")
    assert all(e["method"] in (None, b.name) for e in together)


def check_determinism(b: Built) -> None:
    assert_same(as_json(b.session.explain(b.images)), as_json(b.session.explain(b.images)), where=b.name)


def check_round_trip(b: Built, tmp_path: Path) -> None:
    from interp_ray.session import ExplainSession

    saved = b.session.explainer.save(str(tmp_path / "again"))
    again = ExplainSession.build(b.name, b.classifier, saved)
    assert_same(as_json(again.explain(b.images)), as_json(b.session.explain(b.images)), atol=1e-6, where=b.name)


def check_bad_input(b: Built) -> None:
    c, h, w = b.session.model.input_shape
    with pytest.raises(UserError, match="shape"):
        b.session.explain(np.zeros((1, c, h + 1, w), dtype=np.float32))
    with pytest.raises(UserError, match="no_such_parameter"):
        b.session.explain(b.images[:1], params={"no_such_parameter": 1})
    n = int(b.session.model.num_classes)
    with pytest.raises(UserError, match=f"target class {n} is out of range"):
        b.session.explain(b.images[:1], [n])
    if not b.cls.takes_target():
        with pytest.raises(UserError, match="takes no target"):
            b.session.explain(b.images[:1], [0])


def check_cli(b: Built, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from jobs.common import run_main
    from jobs.explain import main, read_image

    png = tmp_path / "input.png"
    pixels = (b.images[0] * 255).round().astype(np.uint8)
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(png)
    args = [b.name, "--checkpoint", str(b.checkpoint or b.classifier_path), str(png), "--json"]
    if b.cls.learned and b.session.explainer.layers():
        args += ["--classifier", str(b.classifier_path)]
    assert run_main(main, args) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    want = as_json(b.session.explain(read_image(str(png), b.session.model)[None]))[0]
    assert printed["image"] == str(png)
    # The CLI also says whose prediction it explains, from the checkpoints it was given (a learned method's alone has
    # no classifier to compare with); tests/jobs/test_explain_cli.py checks that. Here: the explanation itself.
    if "--classifier" in args or not b.cls.learned or b.session.explainer.own_predictor() is not None:
        assert isinstance(printed["explanation"].get("explains"), dict), printed["explanation"].get("explains")
    assert_same({**printed["explanation"], "explains": None}, want, atol=1e-5, where=f"{b.name} via the CLI")


def asgi_client(app):
    """Starlette's TestClient, without its deprecation warning about httpx."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*httpx.*")  # Starlette's own category, not a DeprecationWarning
        from starlette.testclient import TestClient
    return TestClient(app)


def check_http(b: Built) -> None:
    from serving.api import make_api
    from serving.jobs import JobRunner
    from serving.service import ExplainerService, LocalBackend

    args = {"checkpoint": str(b.classifier_path), "methods": [b.name], "token_env": "INTERP_RAY_TEST_UNSET_TOKEN",
            "explainer_checkpoints": {b.name: str(b.checkpoint)} if b.checkpoint else {}}
    service = ExplainerService(args)
    assert b.name in service.sessions, service.skipped
    backend = LocalBackend(service)
    with asgi_client(make_api(backend, JobRunner(backend=backend), service.args, token="")) as client:
        resp = client.post(f"/v1/explain/{b.name}", json={"tensor": b.images.tolist()})
        assert resp.status_code == 200, resp.text
        # serving says whose prediction each answer explains, as the session does when asked
        assert_same(resp.json()["explanations"], as_json(b.session.explain(b.images, explains=True)), atol=ATOL,
                    where=f"{b.name} via HTTP")
        bad = client.post(f"/v1/explain/{b.name}", json={"tensor": b.images[:1].tolist(),
                                                         "params": {"no_such_parameter": 1}})
        assert bad.status_code == 422 and "no_such_parameter" in bad.json()["error"]["message"], bad.text


DATA = {"digits": {"name": "digits"}, "scenes": {"name": "scenes", "options": {"size": 32, "n": N_IMAGES}}}


def explain_through_ray_data(kind: str, methods: list[Built], root: Path) -> dict[str, Any]:
    """``methods`` (all over the ``kind`` classifier) through one ``explain_dataset`` job on Ray Data; method → its
    store's location."""
    from jobs.explain_dataset import ExplainDatasetConfig, explain_dataset

    cfg = ExplainDatasetConfig.model_validate({
        "checkpoint": str(methods[0].classifier_path), "data": DATA[kind], "split": "test", "rows": N_IMAGES,
        "target": "predicted",  # what the other consumers explain when given no target
        "methods": [{"name": b.name, "checkpoint": str(b.checkpoint) if b.checkpoint else None} for b in methods],
        # parts of 3 rows in batches of 3 over 2 actors: the 4 rows are explained in batches of other sizes
        "store": {"root": str(root), "shard_rows": 3},
        "compute": {"engine": "ray", "actors": 2, "batch_size": 3, "load_num_cpus": 0.25},
        "evaluation": {"enabled": False}})
    return {m: splits["test"] for m, splits in explain_dataset(cfg).locations.items()}


def check_ray_data(b: Built, location: str) -> None:
    import torch

    from interp_ray.data import load_dataset
    from interp_ray.saliency_store import SALIENCY_COLUMN, open_store

    store = open_store(location)
    rows = store.read(columns=["index", "target", "prediction"])
    assert rows["index"].tolist() == list(range(N_IMAGES)), f"{b.name}: rows {rows['index'].tolist()}"
    data = DATA[b.kind]
    images = load_dataset(data["name"], "test", **data.get("options", {})).get_batch(rows["index"])["image"]
    want = b.session.explain(images)
    assert rows["target"].tolist() == [e.label for e in want], b.name
    with torch.inference_mode():
        predicted = b.classifier.model(torch.from_numpy(np.ascontiguousarray(images))).argmax(1).tolist()
    assert rows["prediction"].tolist() == predicted, b.name
    if store.manifest.column == SALIENCY_COLUMN:
        np.testing.assert_allclose(store.masks(), np.stack([e.saliency for e in want]), atol=ATOL, err_msg=b.name)
    else:
        assert_same(store.explanations(), as_json(want), atol=ATOL, where=f"{b.name} via Ray Data")


def shipped_by_value(classes) -> list[Any]:
    """The modules of the methods defined outside ``interp_ray`` that a Ray worker may not import (a test module, a
    driver script): registered with cloudpickle to travel by value, as Ray ships a driver script's classes."""
    import sys

    import ray.cloudpickle

    modules = {c.__module__ for c in classes if not c.__module__.startswith("interp_ray.")}
    found = [sys.modules[m] for m in sorted(modules) if m in sys.modules]
    for module in found:
        ray.cloudpickle.register_pickle_by_value(module)
    return found


# --------------------------------------------------------------------------- the suite


class ConformanceSuite:
    """Subclass with ``method = "<registered name>"``; every test below is one clause of the contract.

    A subclass checking several methods at once (the repository's suite over the registry) overrides ``methods``
    and parametrises the ``method_name`` fixture over them; the Ray Data clause then runs one job per classifier
    for them all. ``conformance_torch_threads`` (1) is the torch thread count the class runs under: Ray's workers
    run with one thread, and float32 sums, and so the last bits, depend on the count.
    """

    method: ClassVar[str]

    @classmethod
    def methods(cls) -> list[str]:
        """The methods this class checks (the Ray Data clause explains them together)."""
        return [cls.method]

    @pytest.fixture(scope="class")
    @classmethod
    def method_name(cls) -> str:
        return cls.method

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_torch_threads(cls) -> int:
        return 1

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_workshop(cls, tmp_path_factory, conformance_torch_threads):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(conformance_torch_threads)
        try:
            yield Workshop(tmp_path_factory.mktemp("conformance"))
        finally:
            torch.set_num_threads(before)

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls, conformance_workshop):
        """name → the method built (once per class)."""
        cache: dict[str, Built] = {}

        def get(name: str) -> Built:
            if name not in cache:
                cache[name] = Built(name, conformance_workshop)
            return cache[name]

        return get

    @pytest.fixture(scope="class")
    @classmethod
    def subject(cls, built, method_name) -> Built:
        return built(method_name)

    @pytest.fixture(scope="class")
    @classmethod
    def through_ray_data(cls, built, ray_session, tmp_path_factory) -> dict[str, Any]:
        """Every checked method's store, from one Ray Data job per classifier."""
        import ray.cloudpickle

        by_kind: dict[str, list[Built]] = {}
        for name in cls.methods():
            b = built(name)
            by_kind.setdefault(b.kind, []).append(b)
        root = tmp_path_factory.mktemp("ray_data")
        shipped = shipped_by_value([b.cls for bs in by_kind.values() for b in bs])
        try:
            return {m: loc for kind, bs in by_kind.items()
                    for m, loc in explain_through_ray_data(kind, bs, root).items()}
        finally:
            for module in shipped:
                ray.cloudpickle.unregister_pickle_by_value(module)

    def test_explanations_do_not_depend_on_the_batch(self, subject):
        check_batch_invariance(subject)

    def test_explanations_repeat_exactly(self, subject):
        check_determinism(subject)

    def test_a_saved_and_loaded_method_explains_the_same(self, subject, tmp_path):
        if not subject.cls.learned:
            pytest.skip(f"{subject.name} has no learned state to save")
        check_round_trip(subject, tmp_path)

    def test_bad_input_is_a_user_error_naming_the_problem(self, subject):
        check_bad_input(subject)

    def test_the_cli_gives_the_in_process_explanation(self, subject, tmp_path, capsys):
        check_cli(subject, tmp_path, capsys)

    @pytest.mark.ray
    def test_ray_data_gives_the_in_process_explanation(self, subject, through_ray_data):
        check_ray_data(subject, through_ray_data[subject.name])

    def test_the_http_api_gives_the_in_process_explanation(self, subject):
        check_http(subject)
