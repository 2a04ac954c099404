"""Evaluate stored saliency masks against the dataset's ground truth: ``report.md``, ``results.json``, overlays.

Per method (one explanation store each, all over the same rows of the same split of the same checkpoint):

* pointing game (accuracy and the mean of per-class accuracies) on the rows' ``boxes``/``box_labels``;
* localisation error with the α·mean threshold, α tuned per method on a held-out split's store of the same method
  (``tune_stores``) or given (``alpha``);
* deletion and insertion AUC (``interp_ray.metrics.saliency.causal_curves``) when a ``checkpoint`` is given — these
  run the classifier, and it must be the one the masks were computed from (same content digest);
* the mean of every per-row scalar the method reported (e.g. GFI's ``fallback`` rate, ``p_masked``).

Nothing is recomputed but the metrics: masks come from the stores, images and boxes from the dataset the store's
identity names (regenerated, and checked against the recorded ``describe()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from interp_ray.errors import UserError
from interp_ray.saliency_store import EXTRA_PREFIX, SALIENCY_COLUMN, SaliencyStore

CHUNK_ROWS = 128     # rows regenerated from the dataset at a time
CAUSAL_CHUNK = 32    # images × (steps + 1) composites per forward pass group: bounds memory


@dataclass
class StoredMasks:
    """One store read whole: its rows in index order."""

    method: str
    store: SaliencyStore
    columns: dict[str, np.ndarray]

    @property
    def index(self) -> np.ndarray:
        return self.columns["index"]

    @property
    def targets(self) -> np.ndarray:
        return self.columns["target"]

    @property
    def masks(self) -> np.ndarray:
        return self.columns[SALIENCY_COLUMN]


def read_stores(stores: Mapping[str, str]) -> dict[str, StoredMasks]:
    """Open and read each store; they must cover the same rows of the same split, from the same checkpoint."""
    if not stores:
        raise UserError("no stores to evaluate")
    out = {}
    for name, location in stores.items():
        store = SaliencyStore.open(location)
        out[name] = StoredMasks(name, store, store.read())  # type: ignore[arg-type]
    first = next(iter(out.values()))
    for m in out.values():
        for what in ("checkpoint_digest", "dataset", "split", "data"):
            if m.store.manifest.identity[what] != first.store.manifest.identity[what]:
                raise UserError(f"stores {first.method} and {m.method} differ in {what}; evaluate stores of one "
                                f"checkpoint over one split")
        if not np.array_equal(m.index, first.index):
            raise UserError(f"stores {first.method} and {m.method} do not hold the same rows")
    return out


def dataset_of(store: SaliencyStore):
    """The dataset split the store was computed over, as its job loaded it, checked against its recorded
    description."""
    from interp_ray.data import load_as_explained
    from interp_ray.jsonsafe import json_round_trip

    ident = store.manifest.identity
    data = ident.get("data") or {}
    ds = load_as_explained(data, ident["split"], store.manifest.class_names)
    if json_round_trip(ds.describe()) != ident["dataset"]:
        raise UserError(f"{data['name']}/{ident['split']} no longer matches what store {store.key} was computed "
                        f"over (its description changed); recompute the store")
    return ds


def ground_truth(dataset, index: np.ndarray, *, images: bool) -> dict[str, np.ndarray]:
    """``boxes``, ``box_labels`` (and ``image`` when asked) of the given rows, regenerated chunk by chunk."""
    keys = ["boxes", "box_labels"] + (["image"] if images else [])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for lo in range(0, len(index), CHUNK_ROWS):
        batch = dataset.get_batch(index[lo:lo + CHUNK_ROWS])
        for k in keys:
            if k in batch:
                parts[k].append(np.asarray(batch[k]))
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def tune_alphas(tune_stores: Mapping[str, str]) -> dict[str, float]:
    """α per method, tuned for the lowest localisation error on its tuning store."""
    from interp_ray.metrics.saliency import tune_alpha

    stored = read_stores(tune_stores)
    first = next(iter(stored.values()))
    truth = ground_truth(dataset_of(first.store), first.index, images=False)
    if "boxes" not in truth:
        raise UserError(f"the tuning split {first.store.manifest.identity['split']} has no boxes to tune α on")
    return {name: tune_alpha(list(m.masks), truth["boxes"], truth["box_labels"], m.targets)[0]
            for name, m in stored.items()}


def localisation_scores(m: StoredMasks, truth: dict[str, np.ndarray], alpha: float, tolerance: float
                        ) -> dict[str, float]:
    from interp_ray.metrics.saliency import localisation_error, pointing_game

    pg = pointing_game(list(m.masks), truth["boxes"], truth["box_labels"], m.targets, tolerance=tolerance)
    loc = localisation_error(list(m.masks), truth["boxes"], truth["box_labels"], m.targets, alpha=alpha)
    return {"pointing": pg["accuracy"], "pointing_class_mean": pg["class_mean"], "alpha": float(alpha),
            "loc_error": loc}


def causal_scores(model, m: StoredMasks, images: np.ndarray, steps: int) -> dict[str, float]:
    from interp_ray.metrics.saliency import causal_curves

    dele, ins = [], []
    for lo in range(0, len(images), CAUSAL_CHUNK):
        curves = causal_curves(model, images[lo:lo + CAUSAL_CHUNK], m.masks[lo:lo + CAUSAL_CHUNK],
                               m.targets[lo:lo + CAUSAL_CHUNK], steps=steps)
        dele.append(curves.deletion_auc)
        ins.append(curves.insertion_auc)
    return {"deletion_auc": float(np.concatenate(dele).mean()), "insertion_auc": float(np.concatenate(ins).mean())}


def extra_means(m: StoredMasks) -> dict[str, float]:
    """Mean of each scalar extra over the rows (NaN rows skipped): e.g. the GFI fallback rate."""
    out = {}
    for col, values in m.columns.items():
        if col.startswith(EXTRA_PREFIX):
            v = np.asarray(values, dtype=np.float64)
            out[col[len(EXTRA_PREFIX):]] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def load_model_for(checkpoint: str, stored: dict[str, StoredMasks]):
    from interp_ray.checkpoint import load_classifier

    loaded = load_classifier(checkpoint)
    digest = next(iter(stored.values())).store.manifest.identity["checkpoint_digest"]
    if loaded.digest != digest:
        raise UserError(f"checkpoint {checkpoint} (digest {loaded.digest[:12]}) is not the one the masks were "
                        f"computed from ({digest[:12]}); deletion/insertion would measure another model")
    return loaded.model.eval()


def evaluate_saliency(stores: Mapping[str, str], *, tune_stores: Mapping[str, str] | None = None,
                      alpha: float | None = None, checkpoint: str | None = None, out_dir: str | Path | None = None,
                      causal_steps: int = 32, overlays: int = 4, tolerance: float = 0.0) -> dict[str, Any]:
    """Score every method's stored masks (``stores``: method → store location) and, with ``out_dir``, write
    ``report.md``, ``results.json`` and ``overlays`` PNGs there. α: tuned per method on ``tune_stores`` (same
    methods, a held-out split), else ``alpha``. Deletion/insertion only when ``checkpoint`` is given.
    Returns the ``results.json`` content."""
    import torch

    from interp_ray.metrics.saliency import empty_share

    stored = read_stores(stores)
    first = next(iter(stored.values()))
    dataset = dataset_of(first.store)
    truth = ground_truth(dataset, first.index, images=checkpoint is not None)
    alphas: dict[str, float] = {}
    if "boxes" in truth:  # datasets without boxes get deletion/insertion only
        if alpha is None and not tune_stores:
            raise UserError("give tune_stores (α tuned per method on them) or a fixed alpha")
        alphas = tune_alphas({m: tune_stores[m] for m in stored}) if alpha is None else {m: alpha for m in stored}
    model = load_model_for(checkpoint, stored) if checkpoint is not None else None
    methods: dict[str, Any] = {}
    for name, m in stored.items():
        row: dict[str, Any] = {"store": m.store.location, "key": m.store.key,
                               "method": m.store.manifest.identity["method"]}
        if "boxes" in truth:
            row.update(localisation_scores(m, truth, alphas[name], tolerance))
        if model is not None:
            with torch.no_grad():
                row.update(causal_scores(model, m, truth["image"], causal_steps))
        row["empty_share"] = empty_share(m.masks)
        row["extras"] = extra_means(m)
        methods[name] = row
    ident = first.store.manifest.identity
    results = {"dataset": ident["data"], "split": ident["split"], "rows": int(len(first.index)),
               "target": ident["target"], "checkpoint_digest": ident["checkpoint_digest"],
               "alpha_source": ("given" if alpha is not None else "tuned") if alphas else None,
               "tolerance": tolerance,
               "causal_steps": causal_steps if model is not None else None, "methods": methods}
    if out_dir is not None:
        write_report(Path(out_dir), results, stored, dataset, overlays)
    return results


# --- the report --------------------------------------------------------------------------------------------------

def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| method | pointing game ↑ | pointing (class mean) ↑ | α | localisation error ↓ | deletion AUC ↓ | "
             "insertion AUC ↑ | empty maps ↓ |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results["methods"].items():
        lines.append(f"| {name} | {_fmt(r.get('pointing'))} | {_fmt(r.get('pointing_class_mean'))} | "
                     f"{_fmt(r.get('alpha'), 1)} | {_fmt(r.get('loc_error'))} | {_fmt(r.get('deletion_auc'))} | "
                     f"{_fmt(r.get('insertion_auc'))} | {_fmt(r.get('empty_share'))} |")
    return "\n".join(lines)


def write_overlays(out: Path, stored: dict[str, StoredMasks], dataset, k: int) -> list[str]:
    """The first ``k`` rows: the image, then every method's mask over it, boxes drawn."""
    from interp_ray.plots import save_overlays

    first = next(iter(stored.values()))
    k = min(k, len(first.index))
    if not k:
        return []
    batch = dataset.get_batch(first.index[:k])
    paths = []
    for i in range(k):
        path = out / f"overlay_{i:02d}.png"
        titles = [f"{name} (class {int(m.targets[i])})" for name, m in stored.items()]
        save_overlays(path, batch["image"][i], [m.masks[i] for m in stored.values()], titles=titles,
                      boxes=batch["boxes"][i] if "boxes" in batch else None)
        paths.append(path.name)
    return paths


def write_report(out: Path, results: dict[str, Any], stored: dict[str, StoredMasks], dataset, overlays: int
                 ) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_overlays(out, stored, dataset, overlays)
    results["overlays"] = pngs
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    data = results["dataset"]
    lines = [f"# Saliency evaluation: {data['name']} / {results['split']}", "",
             f"{results['rows']} rows, explaining the {results['target']} class; checkpoint digest "
             f"{results['checkpoint_digest'][:12]}; "
             + (f"α {results['alpha_source']}" if results["alpha_source"] else "no boxes")
             + (f", deletion/insertion over {results['causal_steps']} steps" if results["causal_steps"] else
                ", no deletion/insertion (no checkpoint given)") + ".", "", markdown_table(results), ""]
    extras = {n: r["extras"] for n, r in results["methods"].items() if r["extras"]}
    if extras:
        lines += ["Per-row extras (means):", ""]
        lines += [f"- {n}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in e.items()) for n, e in extras.items()]
        lines.append("")
    lines += ["Stores:", ""] + [f"- {n}: `{r['store']}` (key {r['key']})" for n, r in results["methods"].items()]
    if pngs:
        lines += ["", "Overlays:", ""] + [f"![{p}]({p})" for p in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
