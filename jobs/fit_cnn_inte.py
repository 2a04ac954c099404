"""Fit a CNN-INTE meta-model on a classifier's activations from the store; report fidelity and accuracy; draw routes.

    python -m jobs.fit_cnn_inte --config configs/cnn_inte_digits.yaml [--set cnn_inte.k1=12]

The layer's activations come from the activation store (``jobs.extract_activations`` runs first and only computes
the shards that are missing, so a second run reads what the first wrote). The fit streams the store's batches, joined
with the dataset's images by row index so the clusters keep representative pictures. The meta-model is saved as an
interp-ray explainer checkpoint (config.json + weights.safetensors + estimators.skops) at ``output``; beside it
``report.json`` (fidelity and accuracy per evaluated split), ``global.png`` (every cluster) and one route diagram
per explained test row (``route_<i>.png``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pydantic import Field

from interp_ray.config import DataConfig, Section, load_config
from interp_ray.errors import UserError
from interp_ray.explainers.cnn_inte import CnnInte, CnnInteConfig, global_figure, route_diagram
from jobs.common import base_parser, exit_with
from jobs.extract_activations import (ComputeSection, ExtractJobConfig, ExtractPlan, StoreSection, absolute, extract,
                                      make_plan)

# The interp-ray commands that run this job (jobs/cli.py reads this line without importing the module).
CLI_COMMANDS = ("fit-cnn-inte",)


class CnnInteJobConfig(Section):
    checkpoint: str = "outputs/digits_cnn"          # the classifier whose layer is explained
    data: DataConfig = Field(default_factory=lambda: DataConfig(name="digits"))
    fit_split: str = "train"
    eval_splits: list[str] = Field(default_factory=lambda: ["test"])
    cnn_inte: CnnInteConfig = Field(default_factory=CnnInteConfig)
    store: StoreSection = Field(default_factory=StoreSection)
    compute: ComputeSection = Field(default_factory=lambda: ComputeSection(actors=1))
    batch_rows: int = Field(4096, gt=0)              # rows per batch read from the store
    diagrams: int = Field(3, ge=0)                   # route diagrams for the first rows of the first eval split
    output: str = "outputs/cnn_inte_digits"


def with_layer(cfg: CnnInteJobConfig) -> CnnInteJobConfig:
    """``cfg`` with ``cnn_inte.layer`` for its classifier: the named one, checked, else the classifier's penultimate
    vector (``CnnInte.configured_for``); read from the checkpoint here, before any extraction or Ray start."""
    from interp_ray.checkpoint import load_classifier

    classifier = load_classifier(cfg.checkpoint, device="cpu")
    return cfg.model_copy(update={"cnn_inte": CnnInte.configured_for(cfg.cnn_inte, classifier)})


def extract_config(cfg: CnnInteJobConfig) -> ExtractJobConfig:
    splits = list(dict.fromkeys([cfg.fit_split, *cfg.eval_splits]))
    return ExtractJobConfig(checkpoint=cfg.checkpoint, layers=[cfg.cnn_inte.layer], data=cfg.data, splits=splits,
                            store=cfg.store, compute=cfg.compute)


def store_holding(plan: ExtractPlan, root: str) -> Any:
    """A complete store under ``<root>/<model>/`` over the plan's rows (same checkpoint, dataset, split, options …)
    that holds the plan's layers among others, e.g. one `interp-ray extract` wrote with the model's default layers,
    or None. Its key differs from the plan's (the key hashes the layer list), so only a look at every manifest there
    finds it; anything else in the identity must be equal."""
    import posixpath

    import pyarrow.fs as pafs

    from interp_ray.store import ActivationStore, read_manifest, resolve_location, store_location

    model_name = plan.manifest.model["name"]
    want = plan.manifest.identity
    fs, folder = resolve_location(store_location(root, model_name, plan.manifest.key))
    for info in sorted(fs.get_file_info(pafs.FileSelector(posixpath.dirname(folder), allow_not_found=True)),
                       key=lambda i: i.path):
        if info.type != pafs.FileType.Directory:
            continue
        manifest = read_manifest(fs, info.path)
        if manifest is None or manifest.key != posixpath.basename(info.path) or not manifest.complete:
            continue
        have = manifest.identity
        if ({k: v for k, v in have.items() if k not in ("layers", "keep")}
                == {k: v for k, v in want.items() if k not in ("layers", "keep")}
                and set(want["layers"]) <= set(have.get("layers") or [])
                and set(want.get("keep") or []) <= set(have.get("keep") or [])):
            try:
                return ActivationStore.open(store_location(root, model_name, manifest.key), key=manifest.key)
            except UserError:   # damaged or half-written after all: extract as if it were not there
                continue
    return None


def stores_for(cfg: CnnInteJobConfig, *, address: str | None = None) -> dict[str, Any]:
    """Each split's store: one that already holds the layer (``store_holding``), else extracted (only the missing
    shards of the job's own store are computed)."""
    from interp_ray.store import ActivationStore

    ecfg = extract_config(cfg)
    found: dict[str, Any] = {}
    if not cfg.store.path:   # a named path is the store the user chose: no search
        for split in ecfg.splits:
            store = store_holding(make_plan(ecfg, split), absolute(cfg.store.root))
            if store is not None:
                found[split] = store
    missing = [s for s in ecfg.splits if s not in found]
    if missing:
        done = extract(ecfg.model_copy(update={"splits": missing}), address=address)
        found.update({s["split"]: ActivationStore.open(s["location"]) for s in done})
    return found


def with_images(store, dataset, batch_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The store's batches plus each row's image from the dataset (the store keeps activations, not pixels)."""
    for batch in store.iter_batches(batch_rows):
        out = dict(batch)
        out["image"] = dataset.get_batch(np.asarray(batch["index"]))["image"]
        yield out


def fit(cfg: CnnInteJobConfig, *, address: str | None = None) -> dict[str, Any]:
    """Extract (or reuse) the activations, fit, report, save and draw. Returns the report."""
    from interp_ray.data import load_dataset
    from interp_ray.data.select import align_classes

    if cfg.cnn_inte.target == "prediction" and not cfg.eval_splits:
        raise UserError("eval_splits is empty: name at least one split to measure fidelity on")
    cfg = with_layer(cfg)
    t0 = time.perf_counter()
    stores = stores_for(cfg, address=address)
    extract_s = time.perf_counter() - t0
    # the stores' labels are in the model's numbering (extraction aligned them); the images' dataset is read alike
    datasets = {split: align_classes(load_dataset(cfg.data.name, split, **cfg.data.options), store.class_names,
                                     what=f"{cfg.data.name}/{split}") for split, store in stores.items()}
    model = CnnInte(cfg.cnn_inte, class_names=stores[cfg.fit_split].class_names)
    t1 = time.perf_counter()
    model.fit(with_images(stores[cfg.fit_split], datasets[cfg.fit_split], cfg.batch_rows))
    fit_s = time.perf_counter() - t1
    model.info.update({"checkpoint": cfg.checkpoint, "data": cfg.data.model_dump(), "fit_split": cfg.fit_split,
                       "store_key": stores[cfg.fit_split].key})
    reports = {split: model.report(stores[split].iter_batches(cfg.batch_rows)) for split in cfg.eval_splits}
    out = Path(cfg.output)
    model.save(str(out))
    pictures = [str(out / "global.png")]
    global_figure(model, path=pictures[0])
    routes, diagrams = draw_routes(model, stores[cfg.eval_splits[0]], datasets[cfg.eval_splits[0]], out, cfg.diagrams)
    pictures += diagrams
    result = {"layer": cfg.cnn_inte.layer, "fit_rows": len(stores[cfg.fit_split]), "extract_s": extract_s,
              "fit_s": fit_s, "timings": model.info.get("timings"), "splits": reports, "checkpoint": str(out),
              "stores": {split: store.location for split, store in stores.items()},
              "pictures": pictures, "routes": routes}
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def draw_routes(model: CnnInte, store, dataset, out: Path, n: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Route diagrams for the first ``n`` rows: the explanation's own route, drawn with the input image. Also returns,
    per diagram, what it draws against what the meta-model predicts for that row (``predict``, a separate pass):
    the label, the forest vote drawn largest, the prediction."""
    if n == 0:
        return [], []
    batch = next(iter(with_images(store, dataset, n)))
    predicted = model.predict(batch)
    routes, paths = [], []
    for i, e in enumerate(model.explain(batch)):
        path = out / f"route_{i}.png"
        route_diagram(model, e, image=batch["image"][i], path=str(path))
        votes = e.path["votes"]
        routes.append({"row": i, "level1": e.path["level1"], "level2": e.path["level2"], "label": int(e.label),
                       "votes_argmax": int(max(votes, key=votes.get)), "prediction": int(predicted[i])})
        paths.append(str(path))
    return routes, paths


def main(argv: Sequence[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = load_config(CnnInteJobConfig, args.config, args.overrides)
    r = fit(cfg, address=args.address)
    for split, rep in r["splits"].items():
        acc = (f", meta accuracy {rep['meta_accuracy']:.4f} vs CNN {rep['cnn_accuracy']:.4f}"
               if "meta_accuracy" in rep else "")
        print(f"CNN-INTE ({r['layer']}, {r['fit_rows']} fit rows, fit {r['fit_s']:.1f} s) on {split}: "
              f"fidelity {rep['fidelity']:.4f}{acc}")
    print(f"checkpoint and pictures: {r['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
