"""The main job's configuration: stage configs compose the jobs' own files, and mistakes fail before any work."""

import dataclasses

import pytest

from interp_ray.config import ClassifierJobConfig
from jobs.common import run_main
from jobs.pipeline import JobRef, PipelineConfig, check, main, selected_stages, stage_seconds


def test_job_ref_layers_file_then_set_then_smoke_then_forced():
    ref = JobRef(config="configs/digits.yaml", set={"train.epochs": 7, "train.lr": 0.01},
                 smoke={"train.epochs": 2})
    full = ref.load(ClassifierJobConfig, smoke=False)
    assert (full.train.epochs, full.train.lr, full.train.batch_size) == (7, 0.01, 64)  # batch size from the file
    smoke = ref.load(ClassifierJobConfig, smoke=True, forced={"output": "/x/y"})
    assert (smoke.train.epochs, smoke.train.lr, smoke.output) == (2, 0.01, "/x/y")


def test_the_shipped_config_is_valid_in_both_sizes():
    from interp_ray.config import load_config

    cfg = load_config(PipelineConfig, "configs/pipeline.yaml")
    stages = selected_stages(cfg, None)
    # each stage's own entry, then its entries on other datasets (named by `stage:`), in the stages' order
    assert stages == ["classifiers", "cnn_inte", "fashion_mnist_cnn_inte", "flint", "fashion_mnist_flint",
                      "fashion_mnist_flint_posthoc", "interpnet", "saliency", "fashion_mnist_saliency", "semantic"]
    assert [cfg.kind(s) for s in stages[1:4]] == ["cnn_inte", "cnn_inte", "flint"]
    check(cfg, stages, smoke=False)
    check(cfg, stages, smoke=True)
    # --only takes entries, exactly: `flint` is the digits entry, not every entry the FLINT stage runs
    assert selected_stages(cfg, ["classifiers", "flint"]) == ["classifiers", "flint"]
    assert selected_stages(cfg, ["classifiers", "fashion_mnist_saliency"]) == ["classifiers", "fashion_mnist_saliency"]


def test_an_entry_naming_no_stage_or_an_unknown_one_is_refused():
    with pytest.raises(ValueError, match="unknown stage 'fmnist_flint'"):
        PipelineConfig.model_validate({"fmnist_flint": {"config": "configs/flint_fashion_mnist.yaml"}})
    with pytest.raises(ValueError, match="unknown stage 'x'"):
        PipelineConfig.model_validate({"x": {"stage": "nope", "config": "configs/flint_fashion_mnist.yaml"}})
    with pytest.raises(ValueError, match="unknown stage 'x'"):  # the classifiers are not an entry's stage
        PipelineConfig.model_validate({"x": {"stage": "classifiers", "config": "configs/digits.yaml"}})


@pytest.mark.parametrize("override, needle", [
    ("fashion_mnist_flint.set={train.epochs: 4}", "has epochs 5 where FLINT has 4"),
    ("fashion_mnist_flint.set={train.seed: 121}", "has seed 0 where FLINT has 121"),
    ("fashion_mnist_flint.classifier=digits", "fashion_mnist_flint.classifier: BASE-f must be trained as FLINT-f is"),
])
def test_base_f_must_share_flint_fs_budget(override, needle, tmp_path, capsys):
    """BASE-f is a classifier of the run: trained any other way than FLINT-f, the comparison would mean nothing."""
    code = run_main(main, ["--config", "configs/pipeline.yaml", "--set", f"output_dir={tmp_path / 'out'}",
                           "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("args, needle", [
    (["--only", "classifiers,nope"], "unknown stage 'nope'"),
    (["--set", "flint.set={train.epochs: -1}"], "train.epochs"),
    (["--set", "cnn_inte.classifier=cifar"], "cnn_inte.classifier: 'cifar'"),
    (["--set", "interpnet.config=configs/missing.yaml"], "configs/missing.yaml does not exist"),
    (["--only", "cnn_inte"], "need the classifiers stage"),
    (["--set", "flint.set={train.epochs: 2}"], "flint: flint.schedule: the mnist schedule's fidelity term (fid) turns "
                                               "on at epoch 3, but train.epochs is 2"),
])
def test_mistakes_exit_2_with_one_line_before_ray_starts(args, needle, tmp_path, capsys):
    code = run_main(main, ["--config", "configs/pipeline.yaml", "--set", f"output_dir={tmp_path / 'out'}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_stage_seconds_sums_the_classifiers():
    assert stage_seconds({"seconds": 3.0}) == 3.0
    assert stage_seconds({"a": {"seconds": 1.0}, "b": {"seconds": 2.5}}) == 3.5


def test_a_rerun_reuses_finished_stages_and_redoes_what_changed(tmp_path, monkeypatch):
    """The driver's bookkeeping, with stand-in stage bodies (the real ones train for minutes; the smoke pipeline
    test runs them)."""
    from interp_ray.config import load_config
    from jobs.pipeline import engine as pipeline

    calls = []

    def fake(name):
        def body(cfg, ctx):
            calls.append(ctx.stage)  # the entry running (a stage runs several: cnn_inte, fashion_mnist_cnn_inte)
            if name == "classifiers":
                out = {}
                for key in ("digits", "scenes", "fashion_mnist"):
                    ckpt = tmp_path / "ckpt" / key
                    ckpt.mkdir(parents=True, exist_ok=True)
                    (ckpt / "config.json").write_text("{}")
                    out[key] = {"checkpoint": str(ckpt), "seconds": 1.0}
                return out
            assert ctx.checkpoints.keys() == {"digits", "scenes", "fashion_mnist"}  # filled in even when reused
            return {"seconds": 2.0}
        return body

    monkeypatch.setattr(pipeline, "PIPELINE_STAGES", {n: dataclasses.replace(st, run=fake(n))
                                                      for n, st in pipeline.load_stages().items()})
    base = load_config(PipelineConfig, "configs/pipeline.yaml")
    stages = selected_stages(base, None)

    def run(cfg, **kw):
        calls.clear()
        ctx = pipeline.Context(str(tmp_path), tmp_path, smoke=True)
        results, reused = pipeline.run_stages(cfg, ctx, stages, **kw)
        return list(calls), reused

    assert run(base, fresh=False) == (stages, [])
    assert run(base, fresh=False) == ([], stages)
    assert run(base, fresh=True)[0] == stages
    # A FLINT setting changes only FLINT; a classifier setting reruns the classifiers and the stages that explain them.
    flint = base.model_copy(deep=True)
    flint.flint.set["train.lr"] = 0.002
    assert run(flint, fresh=False)[0] == ["flint"]
    clf = flint.model_copy(deep=True)
    clf.classifiers["digits"].set["train.lr"] = 0.01
    assert run(clf, fresh=False)[0] == ["classifiers", "cnn_inte", "fashion_mnist_cnn_inte", "fashion_mnist_flint",
                                        "fashion_mnist_flint_posthoc", "interpnet", "saliency",
                                        "fashion_mnist_saliency", "semantic"]
    # A half-written stage file (a run killed while saving) is not trusted.
    (tmp_path / "stages" / "cnn_inte.json").write_text('{"key": ')
    assert run(clf, fresh=False)[0] == ["cnn_inte"]


def test_each_module_of_the_stages_package_registers_its_stage_with_a_report():
    """The engine finds the stages by scanning jobs.pipeline.stages: a stage file is the whole of a method's part."""
    import pkgutil

    import jobs.pipeline.stages as package
    from jobs.pipeline import load_stages

    registry = load_stages()
    modules = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    by_module = {st.run.__module__: name for name, st in registry.items()}
    assert modules <= set(by_module), sorted(modules - set(by_module))
    assert all(registry[by_module[m]].report is not None for m in modules)   # every stage writes its report section
    assert list(registry)[0] == "classifiers"   # first: the others explain its checkpoints


def test_the_engine_names_no_stage_outside_its_comments():
    """A method's code lives in its stage file; the engine reaches it only through the registry."""
    import ast
    import io
    import tokenize
    from pathlib import Path

    import jobs.pipeline.engine as engine

    source = Path(engine.__file__).read_text()
    spans = {(n.body[0].value.lineno, n.body[0].value.col_offset) for n in ast.walk(ast.parse(source))   # docstrings
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(n) is not None}
    code = " ".join(t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type != tokenize.COMMENT and not (t.type == tokenize.STRING and t.start in spans))
    methods = [s for s in engine.stage_names() if s != "classifiers"]
    assert len(methods) >= 5
    assert [m for m in methods if m in code] == []


def test_the_two_object_check_is_gfi_as_the_saliency_job_configures_it_on_two_object_scenes(tmp_path):
    """The saliency stage's class-discrimination figures (GFI 4) are those of GFI, with the job's params, run
    directly on the first two-object test scenes for each object's class; a job without GFI is refused."""
    import numpy as np

    from interp_ray.checkpoint import load_classifier
    from interp_ray.config import validate
    from interp_ray.data.scenes import load_scenes
    from interp_ray.errors import UserError
    from interp_ray.explainers import get_explainer
    from interp_ray.metrics.saliency import class_discrimination
    from interp_ray.testing.specimens import SCENES_OPTS, save_random_classifier
    from jobs.explain_dataset import ExplainDatasetConfig
    from jobs.pipeline.stages.saliency import two_object_discrimination

    ckpt = str(tmp_path / "scenes_cnn")
    save_random_classifier(ckpt, "scenes_cnn", {**SCENES_OPTS, "image_size": 32}, [str(i) for i in range(12)], None,
                           seed=1)
    fast = {"stage1_iterations": 2, "stage2_iterations": 2}
    raw = {"checkpoint": ckpt, "data": {"name": "scenes", "options": {"size": 32}},
           "methods": [{"name": "gradcam"}, {"name": "feature_inversion", "params": fast}]}
    r = two_object_discrimination(validate(ExplainDatasetConfig, raw, source="test"), ckpt, 3)
    two = load_scenes("test", n=3, size=32, two_objects=True).get_batch(np.arange(3))
    gfi = get_explainer("feature_inversion")(load_classifier(ckpt).model)
    ea, eb = (gfi.explain({"image": two["image"], "target": two["box_labels"][:, k]}, {**fast, "return_stage1": True})
              for k in (0, 1))
    want = class_discrimination([e.saliency for e in ea], [e.saliency for e in eb],
                                [e.extra["stage1_saliency"] for e in ea], two["boxes"], two["box_labels"])
    assert r == {**want, "fallback_share": float(np.mean([e.extra["fallback"] for e in ea + eb]))}
    assert r["scenes"] == 3
    # δ as GFI runs it: an option, else the variant's default (the paper's pointing game used 10)
    from jobs.pipeline.stages.saliency import gfi_delta

    def delta(spec):
        return gfi_delta(validate(ExplainDatasetConfig, {**raw, "methods": [spec]}, source="test"))

    assert delta({"name": "feature_inversion"}) == 1.0 and delta({"name": "gradcam"}) is None
    assert delta({"name": "feature_inversion", "options": {"delta": 10}}) == 10.0
    assert delta({"name": "feature_inversion", "options": {"variant": "code"}}) == 2.0
    with pytest.raises(UserError, match="feature_inversion"):
        two_object_discrimination(validate(ExplainDatasetConfig, {**raw, "methods": [{"name": "gradcam"}]},
                                           source="test"), ckpt, 3)
