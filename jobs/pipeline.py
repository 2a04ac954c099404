"""The main job: classifiers, activations, every explainer, their evaluations, and one Markdown report.

    python -m jobs.pipeline [--config configs/pipeline.yaml] [--smoke] [--only classifiers,cnn_inte]

Each stage is one of the project's jobs, configured by that job's own YAML file (``config:``) with the pipeline's
overrides on top (``set:``, and ``smoke:`` with ``--smoke``), so ``python -m jobs.<name> --config <file>`` and the
pipeline stage run the same thing. Stages run in order and print their progress; a stage that needs a classifier
names it (``classifier: scenes``) and gets the checkpoint the first stage wrote. The report (``report.md``, with
its tables and PNG pictures, and ``results.json``) lands in ``output_dir``, local or s3:// / gs://.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from interp_ray.checkpoint import is_remote, join_uri, upload_dir
from interp_ray.claims import evaluate_claims, evaluate_goals, markdown_claims, markdown_goals
from interp_ray.config import (ClassifierJobConfig, Section, deep_merge, load_config, parse_overrides, read_yaml,
                               validate)
from interp_ray.errors import UserError
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray

log = logging.getLogger("interp_ray.pipeline")
C = TypeVar("C", bound=BaseModel)


class JobRef(Section):
    """One job's config file plus the pipeline's overrides (dotted keys, as ``--set`` takes them). ``stage`` names
    the registered stage that runs it when the entry's own key is another name (``fashion_mnist_flint: {stage:
    flint, ...}``): one stage, several datasets."""

    config: str
    stage: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    smoke: dict[str, Any] = Field(default_factory=dict)   # applied on top with --smoke
    enabled: bool = True

    def load(self, cls: type[C], *, smoke: bool, forced: dict[str, Any] | None = None) -> C:
        """The job's config: file, then ``set``, then ``smoke`` (with --smoke), then what the pipeline decides."""
        raw = read_yaml(self.config)
        for layer in (self.set, self.smoke if smoke else {}, forced or {}):
            raw = deep_merge(raw, parse_overrides([f"{k}={json.dumps(v)}" for k, v in layer.items()]))
        return validate(cls, raw, source=f"{self.config} with the pipeline's overrides")

    def classifier_overrides(self, checkpoint: str, *, smoke: bool) -> dict[str, Any]:
        """What the checkpoint of the classifier the entry names sets in its job, beyond the stage's own keys."""
        return {}

    def check_entry(self, cfg: "PipelineConfig", name: str, job: BaseModel, *, smoke: bool) -> None:
        """What the entry asks that its job config alone cannot check (raises UserError); run before any work."""


class StageRef(JobRef):
    classifier: str   # key in ``classifiers`` whose checkpoint the stage explains


class FlintStageRef(JobRef):
    """FLINT's entry. ``classifier``: post hoc, the predictor to freeze; joint, BASE-f, the classifier trained with
    FLINT-f's own budget (model, optimiser, epochs, seed: checked) and L_pred alone, the paper's control.
    ``lime_images``: LIME's fidelity to the same f on the first N test images, beside FLINT-g's (FLINT's Table 1
    comparison)."""

    classifier: str | None = None
    lime_images: int = Field(0, ge=0)

    def classifier_overrides(self, checkpoint: str, *, smoke: bool) -> dict[str, Any]:
        """Post hoc, the classifier is the predictor to freeze."""
        from interp_ray.explainers.flint.config import FlintJobConfig

        if self.classifier and self.load(FlintJobConfig, smoke=smoke,
                                         forced={"flint.predictor_checkpoint": checkpoint}).flint.mode == "posthoc":
            return {"flint.predictor_checkpoint": checkpoint}
        return {}

    def names_base_f(self, job: Any) -> bool:
        return bool(self.classifier) and job.flint.mode != "posthoc"

    def check_entry(self, cfg: "PipelineConfig", name: str, job: Any, *, smoke: bool) -> None:
        """BASE-f is the classifier the entry names, so it must have been trained as FLINT-f is (same model, data and
        optimisation budget) with L_pred alone; a mismatch is a config error, not a comparison."""
        if not self.names_base_f(job):
            return
        clf = cfg.classifiers[self.classifier].load(ClassifierJobConfig, smoke=smoke)
        theirs = {"model": clf.model.model_dump(), "data": clf.data.model_dump(),
                  **{k: getattr(clf.train, k) for k in BUDGET_KEYS}, "lr_steps": []}
        ours = {"model": job.model.model_dump(), "data": job.data.model_dump(),
                **{k: getattr(job.train, k) for k in BUDGET_KEYS}, "lr_steps": job.train.lr_steps}
        diff = [k for k in ours if ours[k] != theirs[k]]
        if diff:
            k = diff[0]
            raise UserError(f"{name}.classifier: BASE-f must be trained as FLINT-f is, but classifier "
                            f"{self.classifier!r} has {k} {theirs[k]!r} where FLINT has {ours[k]!r}")


def _default_classifiers() -> dict[str, JobRef]:
    return {"digits": JobRef(config="configs/digits.yaml"),
            "scenes": JobRef(config="configs/scenes.yaml")}


@dataclass
class Stage:
    """A step of the main job: ``run(cfg, ctx)`` returns its result (JSON-safe), ``report(result, root)`` its
    report lines. ``job`` ("module:Class") is its job's config class, imported only when needed (the job modules
    import torch and Ray); ``default`` is its entry when the pipeline config has none (``StageRef`` when it explains
    a classifier)."""

    name: str
    run: Callable[["PipelineConfig", "Context"], dict[str, Any]]
    job: str | None = None
    default: JobRef | None = None
    report: Callable[[dict[str, Any], Path], list[str]] | None = None


# Registered in run order; a stage defined anywhere (a plug-in, a test) joins with @pipeline_stage and @reports.
PIPELINE_STAGES: dict[str, Stage] = {}


def pipeline_stage(name: str, *, job: str | None = None, default: JobRef | None = None) -> Callable:
    """Register the decorated ``run(cfg, ctx)`` as stage ``name``."""
    def deco(fn: Callable[["PipelineConfig", "Context"], dict[str, Any]]) -> Callable:
        if name in PIPELINE_STAGES:
            raise ValueError(f"pipeline stage {name!r} registered twice")
        PIPELINE_STAGES[name] = Stage(name, fn, job, default)
        return fn

    return deco


def reports(name: str) -> Callable:
    """Register the decorated ``report(result, root) -> lines`` as stage ``name``'s part of report.md."""
    def deco(fn: Callable[[dict[str, Any], Path], list[str]]) -> Callable:
        PIPELINE_STAGES[name].report = fn
        return fn

    return deco


def stage_names() -> list[str]:
    return list(PIPELINE_STAGES)


class PipelineConfig(Section):
    """``output_dir``, the ``classifiers`` and one entry per registered stage (top-level keys of the YAML file); a
    stage the file does not mention runs with its registered default."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    output_dir: str = "outputs/pipeline"
    classifiers: dict[str, JobRef] = Field(default_factory=_default_classifiers)

    @model_validator(mode="after")
    def _stages(self) -> "PipelineConfig":
        extra = dict(self.__pydantic_extra__ or {})
        kinds = {name: _entry_stage(name, given) for name, given in extra.items()}
        unknown = sorted(name for name, kind in kinds.items() if kind not in PIPELINE_STAGES or kind == "classifiers")
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(s for s in PIPELINE_STAGES)} "
                             f"(another key names its stage with `stage:`)")
        refs: dict[str, JobRef] = {}
        for kind, st in PIPELINE_STAGES.items():  # run order: the stages' order, each stage's entries in file order
            if st.default is None:
                continue
            cls = type(st.default)
            if kind not in extra:
                refs[kind] = st.default
            for name, given in extra.items():
                if kinds[name] == kind:
                    ref = given if isinstance(given, cls) else cls.model_validate(given)
                    refs[name] = ref.model_copy(update={"stage": kind})
        self.__pydantic_extra__ = refs
        return self

    def ref(self, name: str) -> JobRef:
        """The config entry ``name`` (a stage's own key, or an entry naming its stage; not the classifiers)."""
        return (self.__pydantic_extra__ or {})[name]

    def entries(self) -> list[str]:
        """Every entry's name, in run order (the classifiers first)."""
        return ["classifiers", *(self.__pydantic_extra__ or {})]

    def kind(self, name: str) -> str:
        """The registered stage that runs entry ``name``."""
        return "classifiers" if name == "classifiers" else self.ref(name).stage or name


def _entry_stage(name: str, given: Any) -> str:
    if isinstance(given, JobRef):
        return given.stage or name
    return (given.get("stage") if isinstance(given, dict) else None) or name


class Context:
    """What stages share: where results go (``out``: final, maybe remote; ``local``: where files are written
    before upload), the classifiers' checkpoints, and the smoke flag."""

    def __init__(self, out: str, local: Path, smoke: bool):
        self.out, self.local, self.smoke = out, local, smoke
        self.checkpoints: dict[str, str] = {}
        self.results: dict[str, Any] = {}   # the finished entries' results (a stage may read an earlier one's)
        self.stage = ""                     # the entry now running: its config is ``cfg.ref(ctx.stage)``

    def checkpoint(self, key: str) -> str:
        if key not in self.checkpoints:
            raise UserError(f"no classifier {key!r} was trained in this run; classifiers: "
                            f"{', '.join(self.checkpoints) or 'none'}")
        return self.checkpoints[key]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def stage(name: str) -> float:
    print(f"[pipeline] {name} …", flush=True)
    return time.perf_counter()


# --- the stages ----------------------------------------------------------------------------------------------------

@pipeline_stage("classifiers")
def train_classifiers(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from jobs.train_classifier import train

    results = {}
    for key, ref in cfg.classifiers.items():
        if not ref.enabled:
            continue
        job = ref.load(ClassifierJobConfig, smoke=ctx.smoke, forced={
            "output": join_uri(ctx.out, "checkpoints", key),
            # shared storage when workers span nodes (s3://, gs://)
            "run.storage_path": join_uri(ctx.out, "ray_runs")})
        t0 = stage(f"training classifier {key} ({job.model.name} on {job.data.name}, "
                   f"{plural(job.train.epochs, 'epoch')})")
        res = train(job)
        ctx.checkpoints[key] = res["checkpoint"]
        results[key] = {"model": job.model.name, "dataset": job.data.name, "epochs": len(res["history"]),
                        "test_accuracy": res["test_accuracy"], "checkpoint": res["checkpoint"],
                        "seconds": time.perf_counter() - t0}
        print(f"[pipeline] {key}: test accuracy {res['test_accuracy']:.4f}", flush=True)
    return results


@pipeline_stage("cnn_inte", job="jobs.fit_cnn_inte:CnnInteJobConfig",
                default=StageRef(config="configs/cnn_inte_digits.yaml", classifier="digits"))
def run_cnn_inte(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from jobs.fit_cnn_inte import CnnInteJobConfig, fit

    ref = cfg.ref(ctx.stage)
    job = ref.load(CnnInteJobConfig, smoke=ctx.smoke, forced={
        "checkpoint": ctx.checkpoint(ref.classifier), "store.root": join_uri(ctx.out, "activations"),
        "output": str(ctx.local / ctx.stage)})
    t0 = stage(f"CNN-INTE on {job.data.name} ({ref.classifier} classifier, layer {job.cnn_inte.layer}): "
               f"extracting activations into the store, then fitting")
    r = fit(job)
    r["dataset"], r["seconds"] = job.data.name, time.perf_counter() - t0
    test = r["splits"][job.eval_splits[0]]
    print(f"[pipeline] {ctx.stage}: fidelity {test['fidelity']:.4f} on {job.eval_splits[0]}", flush=True)
    return r


@pipeline_stage("flint", job="interp_ray.explainers.flint.config:FlintJobConfig",
                default=FlintStageRef(config="configs/flint_digits.yaml"))
def run_flint(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.explainers.flint.config import FlintJobConfig
    from jobs.train_flint import prepare, train

    ref = cfg.ref(ctx.stage)
    out = ctx.local / ctx.stage
    forced: dict[str, Any] = {"output": str(out), "pictures.dir": str(out / "pictures"),
                              "run.storage_path": join_uri(ctx.out, "ray_runs"),
                              "store.root": join_uri(ctx.out, "activations")}   # post hoc: f's taps
    if ref.classifier:
        forced.update(ref.classifier_overrides(ctx.checkpoint(ref.classifier), smoke=ctx.smoke))
    job = ref.load(FlintJobConfig, smoke=ctx.smoke, forced=forced)
    ref.check_entry(cfg, ctx.stage, job, smoke=ctx.smoke)
    mode = job.flint.mode
    clf_accuracy = float(ctx.results["classifiers"][ref.classifier]["test_accuracy"]) if ref.classifier else None
    base = clf_accuracy if ref.names_base_f(job) else None
    t0 = stage(f"FLINT ({mode}) on {job.data.name}, {plural(job.train.epochs, 'epoch')} on Ray Train"
               + (f", against BASE-f = classifier {ref.classifier}" if base else ""))
    job, prepared = prepare(job)
    r = train(job, prepared)
    t = dict(r["test"])
    if base is not None:
        t["accuracy_base_f"] = base
    extra = {}
    if mode == "posthoc" and ref.classifier:  # f is that classifier, frozen: its accuracy must not move
        extra["predictor_accuracy"] = clf_accuracy
    if ref.lime_images:  # --smoke: a few images show the plumbing (LIME runs 1,000 forward passes per image)
        t.update(lime_beside_flint(r["checkpoint"], job, min(ref.lime_images, SMOKE_LIME_IMAGES) if ctx.smoke
                                   else ref.lime_images))
    print(f"[pipeline] FLINT {ctx.stage}: accuracy f {t['accuracy_f']:.4f}, g {t['accuracy_g']:.4f}, fidelity "
          f"{t['fidelity']:.4f}" + (f"; BASE-f {base:.4f}" if base is not None else "")
          + (f"; LIME fidelity {t['lime_fidelity']:.4f} vs FLINT-g {t['flint_fidelity_lime_images']:.4f} on "
             f"{t['lime_images']} images" if "lime_fidelity" in t else ""), flush=True)
    return {"mode": mode, "dataset": job.data.name, "epochs": len(r["history"]), "test": t,
            "tau": job.flint.tau, "global": r["global"], "pictures": [p["path"] for p in r.get("pictures") or []],
            "pictures_enabled": job.pictures.enabled, "checkpoint": r["checkpoint"], "classifier": ref.classifier,
            **extra, "seconds": time.perf_counter() - t0}


SMOKE_LIME_IMAGES = 8
BUDGET_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "seed", "augment_shift")


def lime_beside_flint(checkpoint: str, job: Any, images: int) -> dict[str, Any]:
    """LIME's fidelity to FLINT's f (FLINT-f, or the frozen classifier post hoc) on the first ``images`` test images,
    with FLINT-g's on the same images: the comparison of FLINT's Table 1 (``interp_ray.metrics.fidelity``)."""
    import numpy as np
    import torch

    from interp_ray.data import load_dataset
    from interp_ray.explainers.flint.explainer import FlintExplainer
    from interp_ray.metrics.fidelity import lime_predictions, torch_proba

    flint = FlintExplainer.load(checkpoint).flint.eval()
    test = load_dataset(job.data.name, "test", **job.data.options)
    n = min(images, len(test))
    batch = test.get_batch(np.arange(n))
    with torch.inference_mode():
        out = flint(torch.from_numpy(np.ascontiguousarray(batch["image"], dtype=np.float32)))
    pf, pg = out.logits.argmax(1).numpy(), out.interp_logits.argmax(1).numpy()
    t0 = time.perf_counter()
    print(f"[pipeline] LIME on {n} test images ({n * 1000} forward passes of f) …", flush=True)

    def progress(done: int) -> None:
        if done % 50 == 0:
            print(f"[pipeline] LIME: {done} of {n} images ({time.perf_counter() - t0:.0f} s)", flush=True)

    lime = lime_predictions(torch_proba(flint.predictor), batch["image"], test.num_classes, seed=0, progress=progress)
    return {"lime_images": n, "lime_fidelity": float((lime == pf).mean()),
            "flint_fidelity_lime_images": float((pg == pf).mean()), "lime_seconds": time.perf_counter() - t0}


@pipeline_stage("interpnet", job="interp_ray.explainers.interpnet.config:InterpNETTrainJob",
                default=StageRef(config="configs/interpnet_scenes.yaml", classifier="scenes"))
def run_interpnet(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.explainers.interpnet.config import InterpNETTrainJob
    from jobs.evaluate import evaluate, format_table

    ref = cfg.ref(ctx.stage)
    job = ref.load(InterpNETTrainJob, smoke=ctx.smoke, forced={
        "source.checkpoint": ctx.checkpoint(ref.classifier), "source.store.root": join_uri(ctx.out, "activations"),
        "evaluate.output_dir": str(ctx.local / ctx.stage), "run.storage_path": join_uri(ctx.out, "ray_runs")})
    t0 = stage(f"InterpNET on {job.source.data.name} ({', '.join(job.evaluate.variants)}): activations into the "
               f"store, training on Ray Train from it, then scoring with pycocoevalcap")
    r = evaluate(job)
    scores = [f"{row['variant']} METEOR {row.get('meteor_segment_mean', float('nan')) * 100:.1f}" for row in r["rows"]]
    print(f"[pipeline] InterpNET: {'; '.join(scores)}", flush=True)
    return {"table": format_table(r), "rows": [{k: v for k, v in row.items() if not isinstance(v, (dict, list))}
                                                for row in r["rows"]],
            "samples": r["samples"], "test_images": r["test_images"],
            "image_model_accuracy": r["image_model_accuracy"], "seconds": time.perf_counter() - t0}


@pipeline_stage("saliency", job="jobs.explain_dataset:ExplainDatasetConfig",
                default=StageRef(config="configs/explain_scenes.yaml", classifier="scenes"))
def run_saliency(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.saliency_report import markdown_table
    from jobs.explain_dataset import ExplainDatasetConfig, explain_dataset

    ref = cfg.ref(ctx.stage)
    out = ctx.local / ctx.stage
    job = ref.load(ExplainDatasetConfig, smoke=ctx.smoke, forced={
        "checkpoint": ctx.checkpoint(ref.classifier), "store.root": join_uri(ctx.out, "explanations"),
        "evaluation.output": str(out)})
    names = ", ".join(m.name for m in job.methods)
    t0 = stage(f"saliency ({names}) over {job.data.name}/{job.split} on Ray Data into Parquet, then evaluated")
    r = explain_dataset(job)
    if r.results is None:
        raise UserError("saliency: the stage needs evaluation.enabled (its table is the stage's result)")
    for name, m in r.results["methods"].items():
        figure = (f"pointing game {m['pointing']:.3f}" if "pointing" in m else
                  f"deletion AUC {m.get('deletion_auc', float('nan')):.3f}")
        print(f"[pipeline] {ctx.stage} {name}: {figure}", flush=True)
    return {"table": markdown_table(r.results), "rows": r.results["rows"], "split": r.results["split"],
            "dataset": job.data.name,
            "target": r.results["target"], "alpha_source": r.results["alpha_source"],
            "methods": {n: {k: v for k, v in m.items() if not isinstance(v, dict)}
                        for n, m in r.results["methods"].items()},
            "overlays": [str(out / p) for p in r.results.get("overlays", [])],
            "params": {m.name: m.params for m in job.methods},
            "stores": r.stores, "seconds": time.perf_counter() - t0}


@pipeline_stage("semantic", job="interp_ray.explainers.semantic.config:SemanticTrainJob",
                default=StageRef(config="configs/semantic_scenes.yaml", classifier="scenes"))
def run_semantic(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.data.video_features import items_from_rows
    from interp_ray.explainers.semantic.config import SemanticTrainJob
    from interp_ray.explainers.semantic.explainer import SemanticExplainer
    from interp_ray.metrics.captions import CaptionScorer
    from interp_ray.metrics.semantic import caption_faithfulness, label_precision
    from jobs.train_explainer import role_stores, train

    ref = cfg.ref(ctx.stage)
    job = ref.load(SemanticTrainJob, smoke=ctx.smoke, forced={
        "source.checkpoint": ctx.checkpoint(ref.classifier), "source.store.root": join_uri(ctx.out, "activations"),
        "output": str(ctx.local / ctx.stage), "run.storage_path": join_uri(ctx.out, "ray_runs")})
    t0 = stage(f"semantic captioner (Dong et al., λ = {job.explainer.interp_weight}) on {job.source.data.name}: "
               f"frame features into the store, topics, Ray Train, neuron labels, scoring")
    stores = role_stores(job, ("train", "val", "test"))  # every store the stage reads, in one extraction pipeline
    r = train(job)
    ex = SemanticExplainer.load(r["checkpoint"])
    # The evaluation reads its clips whole (240 test clips; the train clips for the labels' precision).
    items = {role: items_from_rows(store.iter_batches(256), job.frame_column) for role, store in stores.items()}
    test = items["test"]
    captions = ex.caption(test.features, test.mask)
    with CaptionScorer() as scorer:
        scores = scorer.score(captions, test.sentences)
    out = {"lambda": job.explainer.interp_weight, "epochs": len(r["history"]), "best_epoch": r["best_epoch"],
           "test_clips": len(test), "scores": scores, "seconds": 0.0,
           "samples": [{"id": str(i), "caption": c, "reference": refs[0]}
                       for i, c, refs in list(zip(test.ids, captions, test.sentences))[:4]],
           "neurons": [{"neuron": n.neuron, "label": n.label, "words": n.words[:4], "margin": n.margin}
                       for n in ex.neurons if n.confident][:12]}
    if test.attributes is not None:
        out["faithful_captions"] = caption_faithfulness(captions, test)
        precision = label_precision(ex, items["train"])
        out["label_precision"] = {k: v for k, v in precision.items() if k != "labels"}
        out["revision"] = revision_example(ex, test)
    out["seconds"] = time.perf_counter() - t0
    print(f"[pipeline] semantic: METEOR {scores.get('meteor_segment_mean', float('nan')) * 100:.1f}, "
          f"{len(out['neurons'])} confident neuron labels shown", flush=True)
    return out


def revision_example(ex: Any, test: Any) -> dict[str, Any] | None:
    """The human-in-the-loop edit on the first test clip whose caption names a colour that has confidently labelled
    neurons, while another colour has some too: suppress the named colour's neurons, boost the other's, decode."""
    from interp_ray.data.scenes import ATTRIBUTE_VALUES, attribute_mentions

    labelled = {n.label for n in ex.neurons if n.confident}
    colours = [c for c in ATTRIBUTE_VALUES["colour"] if c in labelled]
    for i in range(len(test)):
        caption = ex.caption(test.features[i:i + 1], test.mask[i:i + 1])[0]
        named = [c for c in colours if c in attribute_mentions(caption)]
        others = [c for c in colours if c not in named]
        if named and others:
            before, after = ex.revise(test.features[i:i + 1], test.mask[i:i + 1], wrong=named[:1], right=others[:1])
            return {"id": str(test.ids[i]), "suppress": named[0], "boost": others[0], "before": before[0],
                    "after": after[0]}
    return None


# --- the report ----------------------------------------------------------------------------------------------------

def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


@reports("classifiers")
def report_classifiers(r: dict[str, Any], root: Path) -> list[str]:
    lines = ["## Classifiers (Ray Train)", "", "| name | model | dataset | epochs | test accuracy | time (s) |",
             "|---|---|---|---|---|---|"]
    for key, c in r.items():
        lines.append(f"| {key} | {c['model']} | {c['dataset']} | {c['epochs']} | {c['test_accuracy']:.4f} "
                     f"| {c['seconds']:.0f} |")
    return lines


@reports("cnn_inte")
def report_cnn_inte(r: dict[str, Any], root: Path) -> list[str]:
    lines = [f"## CNN-INTE on {r.get('dataset', 'digits')} (activations from the store, two-level clustering + "
             "random forest)", "",
             f"Layer `{r['layer']}`, {r['fit_rows']} fit rows; fit {r['fit_s']:.1f} s, extraction "
             f"{r['extract_s']:.1f} s.", "",
             "| split | fidelity to the CNN | meta accuracy | CNN accuracy | gap (points) |", "|---|---|---|---|---|"]
    for split, s in r["splits"].items():
        lines.append(f"| {split} | {s['fidelity']:.4f} | {s.get('meta_accuracy', float('nan')):.4f} | "
                     f"{s.get('cnn_accuracy', float('nan')):.4f} | {s.get('accuracy_gap_points', float('nan')):+.2f} |")
    lines += [""] + [f"![{Path(p).stem}]({_rel(p, root)})" for p in r["pictures"]]
    return lines


@reports("flint")
def report_flint(r: dict[str, Any], root: Path) -> list[str]:
    t, tau = r["test"], r["tau"]
    f_is = " (the frozen classifier)" if r["mode"] == "posthoc" else ""
    lines = [f"## FLINT ({r['mode']}, {r['dataset']}, {plural(r['epochs'], 'epoch')} on Ray Train)", "",
             f"| accuracy f{f_is} | accuracy g | fidelity | CNS (τ = {tau:g}) |", "|---|---|---|---|",
             f"| {t['accuracy_f']:.4f} | {t['accuracy_g']:.4f} | {t['fidelity']:.4f} | "
             f"{t.get(f'cns_{tau:g}', float('nan')):.3f} |", ""]
    if "accuracy_base_f" in t:
        lines += [f"BASE-f (classifier `{r.get('classifier')}`, FLINT-f's model, data and budget, L_pred alone): "
                  f"test accuracy {t['accuracy_base_f']:.4f}; FLINT-f − BASE-f = "
                  f"{(t['accuracy_f'] - t['accuracy_base_f']) * 100:+.2f} points.", ""]
    if "predictor_accuracy" in r:
        lines += [f"f before FLINT (classifier `{r.get('classifier')}`): {r['predictor_accuracy']:.4f}.", ""]
    if "lime_fidelity" in t:
        lines += [f"LIME against FLINT-g, the same f, the first {t['lime_images']} test images: LIME fidelity "
                  f"{t['lime_fidelity']:.4f}, FLINT-g {t['flint_fidelity_lime_images']:.4f} (LIME: "
                  f"{t['lime_seconds'] / max(t['lime_images'], 1):.2f} s per image, 1,000 perturbations each).", ""]
    lines += ["Relevant attributes per class (τ = {:g}):".format(tau), ""]
    lines += [f"- class {c}: " + ", ".join(f"{a} ({rel:.2f})" for a, rel in attrs) for c, attrs in r["global"].items()]
    pics = r["pictures"][:6] + r["pictures"][-1:] if len(r["pictures"]) > 7 else r["pictures"]
    lines += [""] + [f"![{Path(p).stem}]({_rel(p, root)})" for p in pics]
    if len(r["pictures"]) > len(pics):
        lines.append(f"\n({len(r['pictures'])} pictures in `{_rel(str(Path(r['pictures'][0]).parent), root)}/`.)")
    return lines


@reports("interpnet")
def report_interpnet(r: dict[str, Any], root: Path) -> list[str]:
    lines = [f"## InterpNET ({r['test_images']} test images)", "", r["table"], "", "Sample explanations:", ""]
    for variant, items in r["samples"].items():
        lines += [f"- {variant}, `{s['id']}` (class {s['label']}): {s['sentence']}" for s in items[:4]]
    return lines


@reports("saliency")
def report_saliency(r: dict[str, Any], root: Path) -> list[str]:
    computed = sum(s["computed_rows"] for s in r["stores"])
    lines = [f"## Saliency: Guided Feature Inversion and baselines ({r.get('dataset', 'scenes')}, {r['rows']} "
             f"{r['split']} images, {r['target']} class)", "",
             f"Masks computed on Ray Data into Parquet explanation stores ({computed} rows computed in this run; "
             f"α {r['alpha_source'] or '—'}).", "", r["table"], ""]
    lines += [f"![{Path(p).stem}]({_rel(p, root)})" for p in r["overlays"]]
    return lines


@reports("semantic")
def report_semantic(r: dict[str, Any], root: Path) -> list[str]:
    sc = r["scores"]
    lines = [f"## Semantic captioner (Dong et al.; λ = {r['lambda']:g}, {r['epochs']} epochs on Ray Train, best "
             f"{r['best_epoch']})", "",
             # Dong et al.'s own METEOR protocol is not known (PAPERS.md); this is InterpNET paper's segment mean
             "| test clips | METEOR (segment mean, InterpNET's protocol) | BLEU-4 | CIDEr-D | faithful captions | "
             "confident labels present in their top clips |", "|---|---|---|---|---|---|"]
    lp = r.get("label_precision") or {}
    share = (f"{lp['share'] * 100:.1f}% ({lp['correct']} of {lp['confident']}; chance "
             f"{lp['chance'] * 100:.0f}%)" if lp.get("confident") else "–")
    faithful = f"{r['faithful_captions'] * 100:.1f}%" if "faithful_captions" in r else "–"
    lines.append(f"| {r['test_clips']} | {sc.get('meteor_segment_mean', float('nan')) * 100:.1f} | "
                 f"{sc.get('bleu4', float('nan')) * 100:.1f} | {sc.get('cider', float('nan')) * 100:.1f} | "
                 f"{faithful} | {share} |")
    lines += ["", "Confidently labelled neurons of the interpretable layer (label; top words):", ""]
    lines += [f"- neuron {n['neuron']}: **{n['label']}** ({', '.join(n['words'])})" for n in r["neurons"]] or ["- none"]
    lines += ["", "Captions:", ""] + [f"- `{s['id']}`: {s['caption']} (a reference: {s['reference']})"
                                      for s in r["samples"]]
    rev = r.get("revision")
    if rev:
        lines += ["", f"Human-in-the-loop edit on `{rev['id']}` (suppress the neurons labelled *{rev['suppress']}*, "
                      f"boost those labelled *{rev['boost']}*): “{rev['before']}” → “{rev['after']}”"]
    return lines


def write_report(local: Path, results: dict[str, Any], seconds: float, smoke: bool,
                 reused: Sequence[str] = (), kinds: dict[str, str] | None = None) -> Path:
    """``kinds``: entry → the stage that ran it (default: each entry is its own stage)."""
    kinds = {name: (kinds or {}).get(name, name) for name in results}
    size = "smoke (tiny budgets: plumbing, not numbers)" if smoke else "full"
    per_stage = ", ".join(f"{name} {stage_seconds(r):.0f} s" + (" in an earlier run" if name in reused else "")
                          for name, r in results.items())
    total = seconds + sum(stage_seconds(results[name]) for name in reused)
    lines = ["# interp-ray pipeline report", "",
             f"Size: {size}. Run time: {total:.0f} s ({per_stage}).", ""]
    for name, r in results.items():
        lines += PIPELINE_STAGES[kinds[name]].report(r, local) + [""]
    claims = evaluate_claims(results, kinds)
    goals = evaluate_goals(results, kinds)
    lines += markdown_claims(claims) + [""]
    if goals:
        lines += markdown_goals(goals) + [""]
    report = local / "report.md"
    report.write_text("\n".join(lines))
    (local / "results.json").write_text(json.dumps({"stages": results, "kinds": kinds,
                                                    "claims": [c.to_dict() for c in claims],
                                                    "goals": [g.to_dict() for g in goals],
                                                    "seconds": total, "this_run_seconds": seconds,
                                                    "reused": list(reused), "smoke": smoke}, indent=2, default=str))
    return report


def stage_seconds(r: dict[str, Any]) -> float:
    """A stage's wall time; the classifiers stage holds one result per classifier."""
    return float(r["seconds"]) if "seconds" in r else sum(float(c["seconds"]) for c in r.values())


# --- driver --------------------------------------------------------------------------------------------------------

def job_class(kind: str) -> type[BaseModel]:
    module, cls = PIPELINE_STAGES[kind].job.split(":")
    return getattr(importlib.import_module(module), cls)


def entry_job(cfg: PipelineConfig, name: str, smoke: bool) -> BaseModel:
    """Entry ``name``'s job config before the run: what a classifier's checkpoint will set is a placeholder."""
    ref = cfg.ref(name)
    placeholder = f"<checkpoint of classifier {getattr(ref, 'classifier', None)}>"
    return ref.load(job_class(cfg.kind(name)), smoke=smoke,
                    forced=ref.classifier_overrides(placeholder, smoke=smoke))


def check(cfg: PipelineConfig, stages: Sequence[str], smoke: bool) -> None:
    """Load every stage's config now, so a typo in any of them fails before an hour of training, not after."""
    if "classifiers" not in stages and any(getattr(cfg.ref(s), "classifier", None) for s in stages):
        raise UserError("the explainer stages need the classifiers stage in the same run (add it to --only)")
    for ref in cfg.classifiers.values():
        if ref.enabled:
            ref.load(ClassifierJobConfig, smoke=smoke)
    trained = [k for k, ref in cfg.classifiers.items() if ref.enabled]
    for name in stages:
        if name == "classifiers":
            continue
        ref = cfg.ref(name)
        job = entry_job(cfg, name, smoke)
        if getattr(ref, "classifier", None) and ref.classifier not in trained:
            raise UserError(f"{name}.classifier: {ref.classifier!r} is not an enabled classifier "
                            f"(enabled: {', '.join(trained) or 'none'})")
        ref.check_entry(cfg, name, job, smoke=smoke)


def selected_stages(cfg: PipelineConfig, only: Sequence[str] | None) -> list[str]:
    """The entries to run, in run order; ``only`` names entries (``flint`` is the digits entry, not every entry
    that runs the FLINT stage: a subset should be exactly what was asked for)."""
    entries = cfg.entries()
    unknown = [s for s in only or [] if s not in entries]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages: {', '.join(entries)}")
    chosen = [s for s in entries if not only or s in only]
    return [s for s in chosen if s == "classifiers" or cfg.ref(s).enabled]


# --- reuse of finished stages --------------------------------------------------------------------------------------

STAGE_FORMAT = 1


def stage_key(cfg: PipelineConfig, name: str, smoke: bool, classifiers_key: str | None) -> str:
    """What a stage's result depends on: its resolved job config(s), the size, and for the explainer stages the
    classifiers they explain (so retraining a classifier reruns everything built on it)."""
    if name == "classifiers":
        job: Any = {k: ref.load(ClassifierJobConfig, smoke=smoke).model_dump()
                    for k, ref in cfg.classifiers.items() if ref.enabled}
    else:
        ref = cfg.ref(name)
        clf = getattr(ref, "classifier", None)
        job = {"job": entry_job(cfg, name, smoke).model_dump(),
               "classifier": [clf, classifiers_key] if clf else None,
               "entry": ref.model_dump(exclude={"config", "set", "smoke", "enabled"})}
    payload = {"format": STAGE_FORMAT, "stage": name, "smoke": smoke, "config": job}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_stage(local: Path, name: str, key: str) -> dict[str, Any] | None:
    """A finished stage's result from an earlier run into the same output_dir, if its key matches."""
    path = local / "stages" / f"{name}.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved["result"] if saved.get("key") == key else None


def save_stage(local: Path, name: str, key: str, result: dict[str, Any]) -> None:
    """Written only after the stage finished, atomically: a killed run leaves either nothing or the whole result."""
    path = local / "stages" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=2, default=str))
    tmp.replace(path)


def reusable_classifiers(result: dict[str, Any]) -> bool:
    return all(Path(c["checkpoint"], "config.json").is_file() for c in result.values())


def run_stages(cfg: PipelineConfig, ctx: Context, stages: Sequence[str], *, fresh: bool
               ) -> tuple[dict[str, Any], list[str]]:
    """Each stage's result, and the names of those reused from an earlier run."""
    results: dict[str, Any] = {}
    reused: list[str] = []
    classifiers_key = None
    reuse = not fresh and not is_remote(ctx.out)  # remote runs stage files in a temp dir: nothing to reuse
    for name in stages:
        key = stage_key(cfg, name, ctx.smoke, classifiers_key)
        old = load_stage(ctx.local, name, key) if reuse else None
        if old is not None and (name != "classifiers" or reusable_classifiers(old)):
            print(f"[pipeline] {name}: reusing the finished result of an earlier run (key {key}; --fresh redoes it)",
                  flush=True)
            results[name] = old
            reused.append(name)
        else:
            ctx.stage = name
            results[name] = PIPELINE_STAGES[cfg.kind(name)].run(cfg, ctx)
            save_stage(ctx.local, name, key, results[name])
        ctx.results[name] = results[name]
        if name == "classifiers":
            classifiers_key = key
            ctx.checkpoints.update({k: c["checkpoint"] for k, c in results[name].items()})
    return results, reused


def run(cfg: PipelineConfig, *, smoke: bool = False, only: Sequence[str] | None = None, fresh: bool = False) -> str:
    """Run the stages; ``output_dir`` may be local or s3:// / gs:// (files are staged locally, then uploaded). A rerun
    into the same local output_dir reuses every stage whose config (and classifiers) did not change."""
    t0 = time.perf_counter()
    stages = selected_stages(cfg, only)
    check(cfg, stages, smoke)
    out = cfg.output_dir if is_remote(cfg.output_dir) else str(Path(cfg.output_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="interp-ray-report-") as staging:
        local = Path(staging) if is_remote(out) else Path(out)
        local.mkdir(parents=True, exist_ok=True)
        ctx = Context(out, local, smoke)
        results, reused = run_stages(cfg, ctx, stages, fresh=fresh)
        report = write_report(local, results, time.perf_counter() - t0, smoke, reused,
                              kinds={name: cfg.kind(name) for name in results})
        if is_remote(out):
            upload_dir(local, out)
            return join_uri(out, report.name)
    return str(report)


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny budgets (tests, a quick look)")
    p.add_argument("--only", help="comma-separated entries of the config to run (default: all enabled), e.g. "
                                  "classifiers,flint,fashion_mnist_flint")
    p.add_argument("--fresh", action="store_true", help="redo every stage, even those an earlier run finished")
    args = p.parse_args(argv)
    cfg = load_config(PipelineConfig, args.config, args.overrides)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    stages = selected_stages(cfg, only)
    check(cfg, stages, args.smoke)
    check_storage_paths(output_dir=cfg.output_dir)
    init_ray(args.address)
    print(f"[pipeline] stages: {', '.join(stages)}", flush=True)
    report = run(cfg, smoke=args.smoke, only=only, fresh=args.fresh)
    print(f"[pipeline] report: {report}")
    return 0


if __name__ == "__main__":
    exit_with(main)
