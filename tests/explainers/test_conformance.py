"""Every registered method held to one contract, generated from the registry (``explainer_names()``).

For each method, built as every consumer builds it (``ExplainSession`` over the protocol's ``from_classifier``):
its explanations do not depend on the batch they are computed in, repeat exactly, survive a save/load round trip
(learned methods), refuse bad input with a ``UserError`` naming the problem, and are the same in-process, through
the CLI (``interp-ray explain``), through Ray Data (``jobs.explain_dataset`` on the session's Ray: one job per
classifier explains the first test rows with all its methods at once, into Parquet) and through the HTTP API (FastAPI
app, in-process backend). The same explanations through Ray Serve over real HTTP are checked for every served method
in tests/serving/test_serving_http.py.

A method added in any module is picked up here with no edit: a learned one needs its small checkpoint's maker in
tests/specimens.py (``SPECIMENS``), or registered with ``add_specimen`` by whoever registers the method.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from specimens import CLASSIFIERS, SPECIMENS

from interp_ray.errors import UserError
from interp_ray.explainers import explainer_names, get_explainer

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


# --------------------------------------------------------------------------- building every method


def images_for(kind: str) -> np.ndarray:
    if kind == "scenes":
        from interp_ray.data.scenes import load_scene_clips

        return load_scene_clips("test", n=N_IMAGES, frames=1, size=32).get_batch(np.arange(N_IMAGES))["clip"][:, 0]
    from interp_ray.data import load_dataset

    return load_dataset("digits", "test").get_batch(np.arange(N_IMAGES))["image"]


@pytest.fixture(scope="module")
def workshop(tmp_path_factory, pinned_torch_threads):
    """The classifiers (made once), and each learned method's small checkpoint (made when first asked for)."""
    root = tmp_path_factory.mktemp("conformance")
    classifiers = {}
    for kind, make in CLASSIFIERS.items():
        make(root / kind)
        classifiers[kind] = root / kind
    return {"root": root, "classifiers": classifiers, "checkpoints": {}}


class Built:
    """One method as every consumer builds it, with its inputs and where its checkpoints are."""

    def __init__(self, name: str, workshop: dict):
        from interp_ray.checkpoint import load_classifier
        from interp_ray.session import ExplainSession

        cls = get_explainer(name)
        self.name, self.cls = name, cls
        kind, self.checkpoint = "digits", None
        if cls.learned:
            if name not in SPECIMENS:
                pytest.fail(f"learned method {name!r} has no specimen: add its small checkpoint's maker to "
                            f"tests/specimens.py SPECIMENS (or add_specimen where it is registered)")
            spec = SPECIMENS[name]
            kind = spec.classifier
            self.checkpoint = workshop["checkpoints"].get(name)
            if self.checkpoint is None:
                self.checkpoint = workshop["root"] / f"{kind}_{name}"
                spec.make(self.checkpoint, workshop["classifiers"][kind])
                workshop["checkpoints"][name] = self.checkpoint
        self.kind = kind
        self.classifier_path = workshop["classifiers"][kind]
        self.classifier = load_classifier(self.classifier_path)
        self.session = ExplainSession.build(name, self.classifier, str(self.checkpoint) if self.checkpoint else None)
        self.images = images_for(kind)


@pytest.fixture(scope="module")
def built(workshop):
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(name, workshop)
        return cache[name]

    return get


METHODS = explainer_names()
LEARNED = [n for n in METHODS if get_explainer(n).learned]


# --------------------------------------------------------------------------- the contract, one check per clause
# Plain functions over a built method, so a test that registers its own method (tests/test_plugin_method.py) holds it
# to the same clauses.


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
    assert_same(printed["explanation"], want, atol=1e-5, where=f"{b.name} via the CLI")


def check_http(b: Built) -> None:
    from serving_helpers import asgi_client

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
        assert_same(resp.json()["explanations"], as_json(b.session.explain(b.images)), atol=ATOL,
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


@pytest.fixture(scope="module")
def through_ray_data(built, ray_session, tmp_path_factory):
    """Every registered method's store, from one Ray Data job per classifier."""
    by_kind: dict[str, list[Built]] = {}
    for name in METHODS:
        b = built(name)
        by_kind.setdefault(b.kind, []).append(b)
    root = tmp_path_factory.mktemp("ray_data")
    return {m: loc for kind, bs in by_kind.items() for m, loc in explain_through_ray_data(kind, bs, root).items()}


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


@pytest.mark.parametrize("name", METHODS)
def test_explanations_do_not_depend_on_the_batch(built, name):
    check_batch_invariance(built(name))


@pytest.mark.parametrize("name", METHODS)
def test_explanations_repeat_exactly(built, name):
    check_determinism(built(name))


@pytest.mark.parametrize("name", LEARNED)
def test_a_saved_and_loaded_method_explains_the_same(built, name, tmp_path):
    check_round_trip(built(name), tmp_path)


@pytest.mark.parametrize("name", METHODS)
def test_bad_input_is_a_user_error_naming_the_problem(built, name):
    check_bad_input(built(name))


@pytest.mark.parametrize("name", METHODS)
def test_the_cli_gives_the_in_process_explanation(built, name, tmp_path, capsys):
    check_cli(built(name), tmp_path, capsys)


@pytest.mark.ray
@pytest.mark.parametrize("name", METHODS)
def test_ray_data_gives_the_in_process_explanation(built, through_ray_data, name):
    check_ray_data(built(name), through_ray_data[name])


@pytest.mark.parametrize("name", METHODS)
def test_the_http_api_gives_the_in_process_explanation(built, name):
    check_http(built(name))


def test_every_learned_method_has_a_specimen():
    assert set(LEARNED) <= set(SPECIMENS), sorted(set(LEARNED) - set(SPECIMENS))


def test_the_suite_covers_what_the_registry_holds():
    # The package scan finds every method module: the five papers' methods and the baselines.
    assert {"interpnet", "semantic", "flint", "cnn_inte", "feature_inversion", "gradcam", "gradient", "occlusion",
            "center"} <= set(METHODS)
