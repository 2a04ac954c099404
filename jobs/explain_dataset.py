"""Explain a whole dataset with any registered methods on Ray Data, into resumable Parquet stores; evaluate the
saliency methods among them.

    python -m jobs.explain_dataset --config configs/explain_scenes.yaml [--set compute.actors=2]
    interp-ray explain-dataset --config configs/explain_scenes.yaml

For every method and every split (the explained ``split``, and ``evaluation.tune_split`` when α is tuned) one
store, ``<store.root>/<model>/<method>/<key>/`` (see ``interp_ray.saliency_store``; rows become its columns in
``interp_ray.explain_rows``); one pipeline fills them all:

    missing (store, shard) ─► map_batches(PlanLoader)     tasks: the shard's rows of the store's dataset split
                           ─► map_batches(RoutedMapper)   actor pool (ActorPoolStrategy(size=actors)): every
                                                          method's ExplainSession built once per actor (a learned
                                                          method from its `checkpoint`); rows routed by store
                           ─► map_batches(RoutedWriter)   one actor: assembles shards, writes each part atomically
                           ─► driver: one record per finished part (a progress line each)

A saliency method's store holds its masks; any other method's (captions, FLINT's attributes, CNN-INTE's path) holds
each row's explanation as the JSON the CLI and HTTP API give. A rerun computes only the missing parts; a finished store
costs no Ray start-up. Then ``evaluation`` (on by default) compares the saliency methods: ``report.md``,
``results.json`` and overlays to ``evaluation.output`` (``interp_ray.saliency_report``).
``compute.engine: local`` runs the same loader, mapper and writer in this process, without Ray.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from interp_ray.checkpoint import load_classifier
from interp_ray.config import DataConfig, Section, load_config
from interp_ray.data import load_as_explained
from interp_ray.data.base import ImageDataset
from interp_ray.errors import UserError
from interp_ray.explain_rows import (TARGET_RULES, ExplanationMapper, MethodChoice, check_method, constant_info,
                                     scalar_extras)
from interp_ray.explainers.base import adopt_explainer, get_explainer
from interp_ray.saliency_store import (DEFAULT_SHARD_ROWS, EXPLANATION_COLUMN, EXTRA_PREFIX, SALIENCY_COLUMN,
                                       SaliencyManifest, make_identity, store_key, store_location)
from interp_ray.store import UNREADABLE, check_store, finalize_store, prepare_store
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray
from jobs.extract_activations import (STORE, ComputeSection, PlanLoader, RoutedWriter, absolute,
                                      as_records, check_resources, gpus_per_actor, pipeline_records, report_skipped,
                                      routed_pipeline, run_routed)

log = logging.getLogger("interp_ray.explain_dataset")


# --- config ------------------------------------------------------------------------------------------------------

class MethodSpec(Section):
    name: str                                               # a registry method
    checkpoint: str | None = None                           # a learned method's checkpoint (local dir or URI)
    options: dict[str, Any] = Field(default_factory=dict)   # constructor options (variant, layer, max_batch …)
    params: dict[str, Any] = Field(default_factory=dict)    # per-request params, checked against its Params


class StoreSection(Section):
    root: str = "outputs/explanations"     # stores go to <root>/<model>/<method>/<key>/ ; local dir or s3:// / gs://
    shard_rows: int = Field(DEFAULT_SHARD_ROWS, gt=0)  # rows per part = the unit of resumption
    compression: Literal["snappy", "zstd", "lz4", "none"] = "zstd"


class ExplainComputeSection(ComputeSection):
    batch_size: int = Field(32, gt=0)      # rows per explain call (GFI further splits them by its max_batch)


class EvaluationSection(Section):
    enabled: bool = True
    output: str | None = None              # report directory; default <store.root>/<model>/report-<split>
    tune_split: str | None = "val"         # α tuned per method on this split (explained too); None: use `alpha`
    tune_rows: int | None = Field(None, gt=0)  # rows of the tuning split (data.options.n for it); None: as data
    alpha: float | None = Field(None, ge=0)  # a fixed α for every method instead of tuning
    tolerance: float = Field(0.0, ge=0)    # pointing-game tolerance in pixels
    causal: bool = True                    # deletion/insertion AUC (runs the classifier again)
    causal_steps: int = Field(32, gt=0)
    overlays: int = Field(4, ge=0)         # overlay PNGs (first rows of the split, every method side by side)

    @model_validator(mode="after")
    def _alpha_source(self) -> "EvaluationSection":
        if self.tune_split is None and self.alpha is None:
            raise ValueError("give evaluation.tune_split (α tuned on it) or evaluation.alpha")
        return self


class ExplainDatasetConfig(Section):
    checkpoint: str                        # a classifier checkpoint directory (local or URI)
    data: DataConfig = Field(default_factory=DataConfig)
    split: str = "test"
    rows: int | None = Field(None, gt=0)   # explain only the split's first rows (None: all of them)
    methods: list[MethodSpec] = Field(min_length=1)
    target: Literal["label", "predicted"] | int = "label"  # the class explained per row
    store: StoreSection = Field(default_factory=StoreSection)
    compute: ExplainComputeSection = Field(default_factory=ExplainComputeSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    progress_every: int = Field(1, gt=0)   # off a terminal, a progress line every N written parts (and 10 s)
    # Drill: after writing this many parts the writer raises, or hangs until killed (tests of resumability).
    fail_after_shards: int | None = Field(None, gt=0)
    fail_mode: Literal["raise", "hang"] = "raise"

    @field_validator("target")
    @classmethod
    def _target(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError(f"target must be {', '.join(TARGET_RULES)} or a class index >= 0")
        return v

    @model_validator(mode="after")
    def _unique_methods(self) -> "ExplainDatasetConfig":
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError("methods must be distinct (one store per method)")
        return self

    def splits(self) -> list[str]:
        tune = self.evaluation.tune_split if self.evaluation.enabled and self.evaluation.alpha is None else None
        return [self.split] + ([tune] if tune and tune != self.split else [])

    def data_options(self, split: str) -> dict[str, Any]:
        if split != self.split and self.evaluation.tune_rows is not None:
            return {**self.data.options, "n": self.evaluation.tune_rows}
        return dict(self.data.options)


# --- planning ----------------------------------------------------------------------------------------------------

@dataclass
class StorePlan:
    """One (method, split) store, checked before any work."""

    method: MethodChoice
    split: str
    dataset: ImageDataset
    checkpoint: str
    digest: str
    location: str
    manifest: SaliencyManifest


def check_methods(cfg: ExplainDatasetConfig) -> list[MethodChoice]:
    """Every method name, its params and its checkpoint (learned methods), validated before the classifier is read."""
    return [check_method(m.name, m.options, m.params, absolute(m.checkpoint) if m.checkpoint else None)
            for m in cfg.methods]


def head_rows(cfg: ExplainDatasetConfig, split: str) -> int | None:
    """``rows``: only the explained split is cut to its first rows (the tuning split is sized by ``tune_rows``)."""
    return cfg.rows if split == cfg.split else None


def data_identity(cfg: ExplainDatasetConfig, split: str) -> dict[str, Any]:
    """How to load the store's rows again (``interp_ray.data.load_as_explained``): loader, options and, for a
    head of the split, its row count (absent otherwise, so the keys of whole-split stores do not change)."""
    rows = head_rows(cfg, split)
    return {"name": cfg.data.name, "options": cfg.data_options(split), **({"rows": rows} if rows is not None else {})}


def dry_run(mapper: ExplanationMapper, dataset: ImageDataset) -> tuple[dict[str, Any], dict[str, str], dict]:
    """(the store's column entry, extra columns, constant method info) from explaining the split's first row: checks
    the method's options, layers, checkpoint and the image size on the driver, and fixes the schema every part will
    share. A method with no saliency keeps its whole explanation as JSON, extras and all."""
    batch = dataset.get_batch(np.arange(1))
    explanations, _ = mapper.explain(batch)
    e = explanations[0]
    if mapper.choice.column == EXPLANATION_COLUMN:
        return {EXPLANATION_COLUMN: {"dtype": "json"}}, {}, {}
    if e.saliency is None or np.ndim(e.saliency) != 2:
        raise UserError(f"method {mapper.choice.name!r} gave no H×W saliency map")
    return ({SALIENCY_COLUMN: {"shape": list(np.shape(e.saliency)), "dtype": "float32"}}, scalar_extras(e.extra),
            constant_info(e.extra))


def has_boxes(dataset: ImageDataset) -> bool:
    return "boxes" in dataset.get_batch(np.arange(1))


def make_plans(cfg: ExplainDatasetConfig) -> list[StorePlan]:
    """One plan per (method, split). A method's mask shape and extras come from its existing store's manifest, or
    from a dry run on the driver when a store is still to be made (which also checks its options and layers)."""
    choices = check_methods(cfg)
    checkpoint = absolute(cfg.checkpoint)
    loaded = load_classifier(checkpoint)
    # numbered as the model's classes, loaded as the saliency report will load them again from the store's record
    datasets = {s: load_as_explained(data_identity(cfg, s), s, loaded.class_names) for s in cfg.splits()}
    for split, ds in datasets.items():
        if len(ds) == 0:
            raise UserError(f"{cfg.data.name}/{split} has no rows")
    if len(datasets) > 1 and all(c.column != SALIENCY_COLUMN for c in choices):  # no saliency to tune α for
        datasets = {cfg.split: datasets[cfg.split]}
    if len(datasets) > 1 and not has_boxes(datasets[cfg.split]):  # nothing to tune α on, nor to score it with
        log.info("%s has no boxes: no α tuning, pointing game or localisation error; deletion/insertion only",
                 cfg.data.name)
        datasets = {cfg.split: datasets[cfg.split]}
    model_name = loaded.config["model"]["name"]
    plans = []
    for choice in choices:
        schema: tuple[dict[str, Any], dict[str, str], dict] | None = None
        for split, ds in datasets.items():
            data = data_identity(cfg, split)
            identity = make_identity(checkpoint_digest=loaded.digest, method=choice.identity(), dataset=ds.describe(),
                                     split=split, data=data, target=cfg.target)
            key = store_key(identity)
            location = store_location(absolute(cfg.store.root), model_name, choice.name, key)
            manifest = SaliencyManifest(key=key, identity=identity, layers={},
                                        model={"name": model_name, "checkpoint": checkpoint},
                                        class_names=list(loaded.class_names), rows=len(ds),
                                        shard_rows=cfg.store.shard_rows)
            existing = check_store(location, manifest)  # another key there: UserError before any work
            if existing is not None:
                columns, extras, info = existing.layers, existing.extras, existing.method_info
            else:
                schema = schema or dry_run(ExplanationMapper(checkpoint, choice, target=cfg.target, device="cpu"),
                                           datasets[cfg.split])
                columns, extras, info = schema
            manifest.layers = dict(columns)
            manifest.extras, manifest.method_info = dict(extras), dict(info)
            plans.append(StorePlan(choice, split, ds, checkpoint, loaded.digest, location, manifest))
    return plans


# --- the stages ---------------------------------------------------------------------------------------------------
#
# One pipeline fills every store of the job: with a few seconds of actor start-up per pipeline (torch import,
# checkpoint load), one per (method, split) cost more than the explaining itself for the cheap methods. Rows carry
# a ``store`` column (the plan's position) that routes them to their method and to their store's writer.

class RoutedMapper:
    """One ``ExplanationMapper`` per method (built once per actor); each row goes to its store's method.

    Every output batch has the same columns whatever methods it mixes — the union of all stores' extras, as float64
    with NaN where a method has no such value, and both ``saliency`` (zeros) and ``explanation`` ("") when the job
    has methods of both kinds — because Ray Data blocks of one stage must share a schema; the writer keeps only its
    store's columns and casts the extras back (bool stays bool)."""

    def __init__(self, checkpoint: str, methods: list[dict[str, Any]], method_extras: list[list[str]],
                 store_method: list[int], target: str | int, device: str | None, torch_threads: int | None,
                 expect_digest: str, mask_shape: list[int] | None = None, classes: list[type] | None = None):
        for cls in classes or ():   # the driver's classes: a method registered only there is known here too
            adopt_explainer(cls)
        self.mappers = [ExplanationMapper(checkpoint, m, target=target, extras=x, device=device,
                                          torch_threads=torch_threads, expect_digest=expect_digest)
                        for m, x in zip(methods, method_extras)]
        self.store_method = np.asarray(store_method, dtype=np.int64)
        self.extra_columns = sorted({EXTRA_PREFIX + x for xs in method_extras for x in xs})
        kinds = {m.choice.column for m in self.mappers}
        self.fill = {}
        if len(kinds) > 1:
            self.fill = {SALIENCY_COLUMN: lambda n: np.zeros((n, *mask_shape), dtype=np.float32),
                         EXPLANATION_COLUMN: lambda n: np.full(n, "", dtype=object)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        method_of_row = self.store_method[np.asarray(batch[STORE], dtype=np.int64)]
        parts = []
        for m in np.unique(method_of_row):
            sel = method_of_row == m
            sub = {k: np.asarray(v)[sel] for k, v in batch.items()}
            out = self.mappers[int(m)](sub)
            out[STORE] = sub[STORE]
            if UNREADABLE in sub:  # the loader's mark of a row to leave out (the writer's to read)
                out[UNREADABLE] = sub[UNREADABLE]
            n = len(out[STORE])
            for col in self.extra_columns:
                out[col] = np.asarray(out[col], dtype=np.float64) if col in out else np.full(n, np.nan)
            for col, empty in self.fill.items():
                if col not in out:
                    out[col] = empty(n)
            parts.append(out)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def loader_of(cfg: ExplainDatasetConfig, plans: list[StorePlan]) -> PlanLoader:
    return PlanLoader([(p.dataset, p.manifest) for p in plans], cfg.compute.batch_size)


def mapper_kwargs(cfg: ExplainDatasetConfig, plans: list[StorePlan]) -> dict[str, Any]:
    methods = list(dict.fromkeys(p.method.name for p in plans))
    choice = {p.method.name: p.method for p in plans}
    # the union over a method's stores: a store made by an older version may list other extras than a new one
    extras = {m: list(dict.fromkeys(x for p in plans if p.method.name == m for x in p.manifest.extras))
              for m in methods}
    return {"checkpoint": plans[0].checkpoint, "methods": [asdict(choice[m]) for m in methods],
            "method_extras": [extras[m] for m in methods], "mask_shape": mask_shape(plans),
            "store_method": [methods.index(p.method.name) for p in plans], "target": cfg.target,
            "device": cfg.compute.device, "torch_threads": cfg.compute.torch_threads,
            "expect_digest": plans[0].digest, "classes": [get_explainer(m) for m in methods]}


def mask_shape(plans: list[StorePlan]) -> list[int] | None:
    """The one mask shape of the job's saliency stores (None: it has none). Blocks of one stage share a schema."""
    shapes = {tuple(p.manifest.mask_shape) for p in plans if p.manifest.column == SALIENCY_COLUMN}
    if len(shapes) > 1:
        raise UserError(f"the methods give saliency maps of different shapes {sorted(shapes)}; run them in "
                        f"separate jobs")
    return list(shapes.pop()) if shapes else None


def writer_kwargs(cfg: ExplainDatasetConfig, plans: list[StorePlan]) -> dict[str, Any]:
    return {"stores": [(p.location, asdict(p.manifest)) for p in plans], "compression": cfg.store.compression,
            "fail_after_shards": cfg.fail_after_shards, "fail_mode": cfg.fail_mode, "manifest_type": SaliencyManifest}


# --- running -----------------------------------------------------------------------------------------------------

def run_local(cfg: ExplainDatasetConfig, plans: list[StorePlan], items: list[dict[str, int]]
              ) -> Iterator[dict[str, Any]]:
    """The same stages in this process, in order: no Ray (small jobs, tests)."""
    loader, mapper = loader_of(cfg, plans), RoutedMapper(**mapper_kwargs(cfg, plans))
    writer = RoutedWriter(**writer_kwargs(cfg, plans))
    for item in items:
        for rows in loader({STORE: np.array([item[STORE]]), "shard": np.array([item["shard"]])}):
            yield from as_records(writer(mapper(rows)))


def run_ray(cfg: ExplainDatasetConfig, plans: list[StorePlan], items: list[dict[str, int]]
            ) -> Iterator[dict[str, Any]]:
    return pipeline_records(lambda: routed_pipeline(cfg.compute, items, loader_of(cfg, plans), RoutedMapper,
                                                    mapper_kwargs(cfg, plans), writer_kwargs(cfg, plans),
                                                    gpus_per_actor(cfg)))


def fill_stores(cfg: ExplainDatasetConfig, prepared: list[tuple[StorePlan, list[int]]], *,
                address: str | None = None) -> list[dict[str, Any]]:
    """Compute every store's missing parts in one pipeline, then mark each store complete."""
    plans = [plan for plan, _ in prepared]
    run = run_local if cfg.compute.engine == "local" else run_ray
    progress = run_routed(prepared, [f"{p.method.name}/{p.split}" for p in plans], engine=cfg.compute.engine,
                          every=cfg.progress_every, records=lambda items: run(cfg, plans, items), address=address,
                          unit="parts")
    out = []
    for (plan, _), prog in zip(prepared, progress):
        manifest = finalize_store(plan.location, plan.manifest)
        report_skipped(f"{plan.method.name}/{plan.split}", manifest)
        out.append({"method": plan.method.name, "split": plan.split, "location": plan.location, "key": manifest.key,
                    "rows": manifest.rows, "parts": manifest.num_shards, "computed_parts": prog.shards,
                    "computed_rows": prog.rows, "seconds": round(prog.seconds, 3)})
    return out


@dataclass
class ExplainDatasetResult:
    """What the job produced: one store per (method, split), and the evaluation when it ran."""

    stores: list[dict[str, Any]]                      # method, split, location, key, rows, computed_parts …
    report_dir: Path | None = None
    results: dict[str, Any] | None = None
    locations: dict[str, dict[str, str]] = field(default_factory=dict)  # method → split → store location


def explain_dataset(cfg: ExplainDatasetConfig, *, address: str | None = None) -> ExplainDatasetResult:
    """Plan every store first (a bad method, option, param or output path fails before anything is written), fill
    the missing parts, then evaluate."""
    plans = make_plans(cfg)
    check_storage_paths(store=plans[0].location if plans else None)
    existing = [check_store(p.location, p.manifest) for p in plans]
    if cfg.compute.engine == "ray" and not all(m is not None and m.complete for m in existing):
        init_ray(address)
        check_resources(cfg, gpus_per_actor(cfg))
    prepared = []
    for plan in plans:
        plan.manifest, missing = prepare_store(plan.location, plan.manifest)  # type: ignore[assignment]
        prepared.append((plan, missing))
    stores = fill_stores(cfg, prepared, address=address)
    locations: dict[str, dict[str, str]] = {}
    for s in stores:
        locations.setdefault(s["method"], {})[s["split"]] = s["location"]
    result = ExplainDatasetResult(stores, locations=locations)
    saliency = {p.method.name for p in plans if p.manifest.column == SALIENCY_COLUMN}
    if cfg.evaluation.enabled and saliency:
        result.report_dir, result.results = evaluate(cfg, {m: s for m, s in locations.items() if m in saliency},
                                                      plans[0].manifest.model["name"])
    elif cfg.evaluation.enabled:
        log.info("no saliency method in the job: nothing to evaluate")
    return result


def evaluate(cfg: ExplainDatasetConfig, locations: dict[str, dict[str, str]], model_name: str
             ) -> tuple[Path, dict[str, Any]]:
    from interp_ray.saliency_report import evaluate_saliency

    ev = cfg.evaluation
    out = Path(ev.output) if ev.output else Path(absolute(cfg.store.root)) / model_name / f"report-{cfg.split}"
    stores = {m: splits[cfg.split] for m, splits in locations.items()}
    tuned = ev.alpha is None and all(ev.tune_split in splits for splits in locations.values())
    tune = {m: splits[ev.tune_split] for m, splits in locations.items()} if tuned else None
    results = evaluate_saliency(stores, tune_stores=tune, alpha=ev.alpha, out_dir=out,
                                checkpoint=absolute(cfg.checkpoint) if ev.causal else None,
                                causal_steps=ev.causal_steps, overlays=ev.overlays, tolerance=ev.tolerance)
    return out, results


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(ExplainDatasetConfig, args.config, args.overrides)
    result = explain_dataset(cfg, address=args.address)
    for s in result.stores:
        done = "already complete" if s["computed_parts"] == 0 else f"{s['computed_parts']} part(s) computed"
        print(f"{s['method']}/{s['split']}: {s['rows']} rows in {s['parts']} part(s), {done}; "
              f"store {s['location']} (key {s['key']})")
    if result.report_dir is not None:
        print(f"report: {result.report_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    exit_with(main)
