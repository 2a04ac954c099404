"""The main job's engine: its config, the stage registry, the run (resuming finished stages), the report and
the claims table. It names no method: each stage is a module of ``jobs.pipeline.stages`` that registers itself with
``@pipeline_stage`` (its run body) and ``@reports`` (its part of report.md), found by a package scan as the
explainers are (``interp_ray.explainers.base.load_explainer_modules``).

Each stage is one of the project's jobs, configured by that job's own YAML file (``config:``) with the pipeline's
overrides on top (``set:``, and ``smoke:`` with ``--smoke``), so ``python -m jobs.<name> --config <file>`` and the
pipeline stage run the same thing. Stages run in order and print their progress; a stage that needs a classifier
names it (``classifier: scenes``) and gets the checkpoint the classifiers stage wrote. The report (``report.md``,
with its tables and PNG pictures, and ``results.json``) lands in ``output_dir``, local or s3:// / gs://.

A stage defined outside this package (a plug-in method's) is named by the config that runs it: ``stages:
[my_package.stage:STAGE]``, ``module:attr`` of a ``Stage`` object (see ``plugin_stage``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import pkgutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from interp_ray.checkpoint import is_remote, join_uri, upload_dir
from interp_ray.claims import REPRODUCTION, Claim, evaluate_claims, markdown_claims, reproduction_link_from
from interp_ray.config import (ClassifierJobConfig, Section, deep_merge, load_config, parse_overrides, read_yaml,
                               validate)
from interp_ray.errors import UserError
from interp_ray.goals import evaluate_goals, markdown_goals
from interp_ray.jsonsafe import write_json_atomic
from interp_ray.progress import Progress as Bar
from interp_ray.progress import progress_mode
from jobs.common import base_parser, check_storage_paths, init_ray

log = logging.getLogger("interp_ray.pipeline")
DESCRIPTION = "The main job: classifiers, activations, every explainer, their evaluations, and one Markdown report."
C = TypeVar("C", bound=BaseModel)

# The package whose modules are the stages (one file per method); scanned once, on first use of the registry.
STAGES_PACKAGE = f"{__package__}.stages"


class JobRef(Section):
    """One job's config file plus the pipeline's overrides (dotted keys, as ``--set`` takes them). ``stage`` names
    the registered stage that runs it when the entry's own key is another name (``fashion_mnist_saliency: {stage:
    saliency, ...}``): one stage, several datasets."""

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


def _default_classifiers() -> dict[str, JobRef]:
    return {"digits": JobRef(config="configs/digits.yaml"),
            "scenes": JobRef(config="configs/scenes.yaml")}


@dataclass
class Stage:
    """A step of the main job: ``run(cfg, ctx)`` returns its result (JSON-safe), ``report(result, root)`` its
    report lines. ``job`` ("module:Class") is its job's config class, imported only when needed (the job modules
    import torch and Ray); ``default`` is its entry when the pipeline config has none (``StageRef`` when it explains
    a classifier; None for the classifiers stage, whose entries are the config's ``classifiers``). Stages run by
    ``order``, then in the order they registered (the scan imports the stage modules by name). ``claims``: the
    paper-claim rows its results feed, for a stage defined outside the project (the project's own stages' rows are
    in ``interp_ray.claims``, in PAPERS.md's order)."""

    name: str
    run: Callable[["PipelineConfig", "Context"], dict[str, Any]]
    job: str | None = None
    default: JobRef | None = None
    report: Callable[[dict[str, Any], Path], list[str]] | None = None
    order: int = 100
    claims: Sequence[Claim] = ()


# name → stage, in run order. The scan of STAGES_PACKAGE fills it; a stage defined anywhere else joins the runs whose
# config names it (``stages:``, see plugin_stage), not this registry.
PIPELINE_STAGES: dict[str, Stage] = {}
_scanned = False


def load_stages() -> dict[str, Stage]:
    """The registry, after importing every module of the stages package once (each registers its stage)."""
    global _scanned
    if not _scanned:
        _scanned = True   # first: a stage module that reads the registry while it loads does not rescan
        package = importlib.import_module(STAGES_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{STAGES_PACKAGE}.{info.name}")
    return PIPELINE_STAGES


def pipeline_stage(name: str, *, job: str | None = None, default: JobRef | None = None, order: int = 100
                   ) -> Callable:
    """Register the decorated ``run(cfg, ctx)`` as stage ``name``, run after the stages of lower ``order``."""
    def deco(fn: Callable[["PipelineConfig", "Context"], dict[str, Any]]) -> Callable:
        if name in PIPELINE_STAGES:
            raise ValueError(f"pipeline stage {name!r} registered twice")
        PIPELINE_STAGES[name] = Stage(name, fn, job, default, order=order)
        ordered = sorted(PIPELINE_STAGES.values(), key=lambda s: s.order)   # stable: ties keep registration order
        PIPELINE_STAGES.clear()
        PIPELINE_STAGES.update((s.name, s) for s in ordered)
        return fn

    return deco


def reports(name: str) -> Callable:
    """Register the decorated ``report(result, root) -> lines`` as stage ``name``'s part of report.md."""
    def deco(fn: Callable[[dict[str, Any], Path], list[str]]) -> Callable:
        PIPELINE_STAGES[name].report = fn
        return fn

    return deco


def stage_names() -> list[str]:
    return list(load_stages())


def plugin_stage(spec: str) -> Stage:
    """The ``Stage`` that ``spec`` (``module:attr``) names: a stage defined outside this package, a plug-in method's.

    Why a config entry (``stages: [module:attr]``) and not an entry-point group, as explainers have: a registered
    stage runs in every pipeline run by default (with its default config), while a registered method costs nothing
    until asked for. So a stage joins the runs whose config names it, the way Ray Serve's config names its app
    (``import_path: module:app``) and a stage names its job's config class (``job: module:Class``): nothing to
    install, and ``ray job submit --runtime-env-json '{"py_modules": [...]}'`` ships the module with the job. The
    module is imported on the driver, where stages run; naming the object instead of relying on decorators run at
    import keeps the import free of side effects (importing it twice registers nothing twice)."""
    module, sep, attr = spec.partition(":")
    if not (sep and module and attr):
        raise ValueError(f"stages: {spec!r} is not module:attr (the Stage object of a plug-in stage)")
    try:
        found = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ValueError(f"stages: cannot import {module!r} for {spec!r} ({e}); is it on PYTHONPATH?") from None
    except AttributeError:
        raise ValueError(f"stages: module {module!r} has no {attr!r}") from None
    if not isinstance(found, Stage):
        raise ValueError(f"stages: {spec!r} is a {type(found).__name__}, not a jobs.pipeline.Stage")
    return found


def with_plugins(registry: dict[str, Stage], specs: Sequence[str]) -> dict[str, Stage]:
    """``registry`` plus the plug-in stages ``specs`` name, in run order (``order``, then the registry's, then the
    list's)."""
    out = dict(registry)
    for spec in specs:
        stage = plugin_stage(spec)
        if stage.name in out and out[stage.name] is not stage:
            raise ValueError(f"stages: {spec!r} is stage {stage.name!r}, a name already taken")
        out[stage.name] = stage
    return dict(sorted(out.items(), key=lambda kv: kv[1].order))   # stable: ties keep their order


class PipelineConfig(Section):
    """``output_dir``, the ``classifiers``, the plug-in ``stages`` (``module:attr`` each) and one entry per stage
    (top-level keys of the YAML file); a stage the file does not mention runs with its default."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    output_dir: str = "outputs/pipeline"
    classifiers: dict[str, JobRef] = Field(default_factory=_default_classifiers)
    stages: list[str] = Field(default_factory=list)

    @field_validator("stages")
    @classmethod
    def _plugins_load(cls, specs: list[str]) -> list[str]:
        with_plugins(load_stages(), specs)   # a name that does not import fails here, with its field
        return specs

    def registry(self) -> dict[str, Stage]:
        """The stages this config runs from: the package's, then its plug-ins (``stages``), in run order (read each
        time: the registry is the live one, as a test that swaps it expects)."""
        return with_plugins(load_stages(), self.stages)

    @model_validator(mode="after")
    def _stages(self) -> "PipelineConfig":
        registry = self.registry()
        extra = dict(self.__pydantic_extra__ or {})
        kinds = {name: _entry_stage(name, given) for name, given in extra.items()}
        unknown = sorted(name for name, kind in kinds.items() if kind not in registry or kind == "classifiers")
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(s for s in registry)} "
                             f"(another key names its stage with `stage:`)")
        refs: dict[str, JobRef] = {}
        for kind, st in registry.items():  # run order: the stages' order, each stage's entries in file order
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

    def job(self, cfg: "PipelineConfig", cls: type[C], *, checkpoint: str | None = None, store: str | None = None,
            output: str | None = None, runs: str | None = None, **forced: Any) -> tuple[JobRef, C]:
        """The running entry and its job config, with the paths the pipeline decides: each keyword names the job's
        config key that gets the entry classifier's checkpoint, the activation store root, the entry's local output
        directory, and Ray Train's storage path; ``forced`` sets other keys (dots spelled ``__``)."""
        ref = cfg.ref(self.stage)
        paths = {checkpoint: self.checkpoint(ref.classifier) if checkpoint else None,
                 store: join_uri(self.out, "activations"), output: str(self.local / self.stage),
                 runs: join_uri(self.out, "ray_runs")}
        fixed = {k: v for k, v in paths.items() if k}
        fixed.update({k.replace("__", "."): v for k, v in forced.items()})
        return ref, ref.load(cls, smoke=self.smoke, forced=fixed)

    def learned_job(self, cfg: "PipelineConfig", cls: type[C], *, output: str = "output") -> C:
        """The running entry's ``jobs.train_explainer`` config (a ``LearnedJobConfig``): the paths go to the keys
        every such config has; ``output`` names the key of the entry's output directory."""
        return self.job(cfg, cls, checkpoint="source.checkpoint", store="source.store.root", output=output,
                        runs="run.storage_path")[1]

    def checkpoint(self, key: str) -> str:
        if key not in self.checkpoints:
            raise UserError(f"no classifier {key!r} was trained in this run; classifiers: "
                            f"{', '.join(self.checkpoints) or 'none'}")
        return self.checkpoints[key]


# --- helpers for the stages' bodies and report sections -------------------------------------------------------------

def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def progress(what: str) -> float:
    """Print that a step starts; its start time, for the stage's ``seconds``."""
    print(f"[pipeline] {what} …", flush=True)
    return time.perf_counter()


def rel_path(path: str, root: Path) -> str:
    """``path`` relative to the report's folder (as report.md links it), or as it is when outside it."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


# --- the report ----------------------------------------------------------------------------------------------------

def write_report(local: Path, results: dict[str, Any], seconds: float, smoke: bool,
                 reused: Sequence[str] = (), kinds: dict[str, str] | None = None,
                 reproduction_link: str | None = None, stages: dict[str, Stage] | None = None) -> Path:
    """``kinds``: entry → the stage that ran it (default: each entry is its own stage). ``reproduction_link``: how
    the claims table links the reproduction job's report (default: relative from ``local`` to the repository's
    copy, the working directory being the repository's root as for every config path). ``stages``: the stages that
    ran (``PipelineConfig.registry()``; default: the package's)."""
    kinds = {name: (kinds or {}).get(name, name) for name in results}
    stages = stages if stages is not None else load_stages()
    size = "smoke (tiny budgets: plumbing, not numbers)" if smoke else "full"
    per_stage = ", ".join(f"{name} {stage_seconds(r):.0f} s" + (" in an earlier run" if name in reused else "")
                          for name, r in results.items())
    total = seconds + sum(stage_seconds(results[name]) for name in reused)
    lines = ["# interp-ray pipeline report", "",
             f"Size: {size}. Run time: {total:.0f} s ({per_stage}).", ""]
    for name, r in results.items():
        lines += stages[kinds[name]].report(r, local) + [""]
    claims = evaluate_claims(results, kinds, [c for st in stages.values() for c in st.claims])
    goals = evaluate_goals(results, kinds)
    lines += markdown_claims(claims, reproduction_link or reproduction_link_from(local)) + [""]
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

def job_class(cfg: PipelineConfig, kind: str) -> type[BaseModel]:
    module, cls = cfg.registry()[kind].job.split(":")
    return getattr(importlib.import_module(module), cls)


def entry_job(cfg: PipelineConfig, name: str, smoke: bool) -> BaseModel:
    """Entry ``name``'s job config before the run: what a classifier's checkpoint will set is a placeholder."""
    ref = cfg.ref(name)
    placeholder = f"<checkpoint of classifier {getattr(ref, 'classifier', None)}>"
    return ref.load(job_class(cfg, cfg.kind(name)), smoke=smoke,
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
    """The entries to run, in run order; ``only`` names entries (a stage's own key is its own entry, not every
    entry that runs that stage: a subset should be exactly what was asked for)."""
    entries = cfg.entries()
    unknown = [s for s in only or [] if s not in entries]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; stages: {', '.join(entries)}")
    chosen = [s for s in entries if not only or s in only]
    return [s for s in chosen if s == "classifiers" or cfg.ref(s).enabled]


# --- reuse of finished stages --------------------------------------------------------------------------------------

# 2: the stages record what the claims table checks (FLINT's picture_checks, CNN-INTE's routes, the saliency stage's
# two_objects, the semantic stage's rule-chosen edit), which a result of format 1 lacks
STAGE_FORMAT = 2


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
    write_json_atomic(local / "stages" / f"{name}.json", {"key": key, "result": result}, indent=2, default=str)


def reusable_classifiers(result: dict[str, Any]) -> bool:
    return all(Path(c["checkpoint"], "config.json").is_file() for c in result.values())


def run_stages(cfg: PipelineConfig, ctx: Context, stages: Sequence[str], *, fresh: bool
               ) -> tuple[dict[str, Any], list[str]]:
    """Each stage's result, and the names of those reused from an earlier run."""
    results: dict[str, Any] = {}
    reused: list[str] = []
    classifiers_key = None
    reuse = not fresh and not is_remote(ctx.out)  # remote runs stage files in a temp dir: nothing to reuse
    # The stages' own count, a line as each one finishes (never a bar: each stage draws its own bars below it)
    done = Bar("pipeline stages", len(stages), "stages", mode="off" if progress_mode() == "off" else "lines",
               every_s=0)
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
            results[name] = cfg.registry()[cfg.kind(name)].run(cfg, ctx)
            save_stage(ctx.local, name, key, results[name])
        ctx.results[name] = results[name]
        if name == "classifiers":
            classifiers_key = key
            ctx.checkpoints.update({k: c["checkpoint"] for k, c in results[name].items()})
        done.update(1, note=f"{name} done")
    done.close()
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
                              kinds={name: cfg.kind(name) for name in results}, stages=cfg.registry(),
                              # uploaded, the report has no repository beside it: name the file instead
                              reproduction_link=REPRODUCTION if is_remote(out) else None)
        if is_remote(out):
            upload_dir(local, out)
            return join_uri(out, report.name)
    return str(report)


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(DESCRIPTION)
    p.add_argument("--smoke", action="store_true", help="tiny budgets (tests, a quick look)")
    stages = ", ".join(s for s in stage_names() if s != "classifiers")
    p.add_argument("--only", help="comma-separated entries of the config to run (default: all enabled): "
                                  f"classifiers, the stages' own keys ({stages}) or the config's other keys")
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

