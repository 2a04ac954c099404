"""FLINT evaluation: BASE-f vs FLINT-f accuracy, fidelity, CNS(τ), post-hoc fidelity; scenes attribute matches;
pictures.

    python -m benchmarks.flint_eval --config configs/flint_digits.yaml --seeds 0 1
    python -m benchmarks.flint_eval --config configs/flint_scenes.yaml --seeds 0

Per seed, in this one process and with the same per-epoch step as the Ray job (``flint_train_epoch``, no Ray):

* BASE-f: the predictor trained with the prediction loss alone — the same loop, data order, initialisation and
  budget as FLINT, every interpretation weight 0 (``flint.mode=base``);
* FLINT-f / FLINT-g: joint training (``flint.mode=joint``);
* post-hoc FLINT: Ψ, h, d trained against the frozen BASE-f (saved as a classifier checkpoint and loaded back, as
  ``jobs.train_flint`` does with ``flint.predictor_checkpoint``), from the activation store of its taps and the
  input (extracted first; the post-hoc time includes that).

Prints ``name: value`` lines (test split), then the mean over seeds and FLINT-f − BASE-f in accuracy points. On data
with ground-truth attributes (scenes) it prints, for the first seed, the table matching each learned attribute to the
ground-truth attribute value it correlates with best over the test split. ``--pictures`` writes the first seed's
MAS / AM+PI pictures and local interpretation sheets. Everything is also written to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from interp_ray.config import load_config
from interp_ray.explainers.flint.config import FlintJobConfig
from interp_ray.explainers.flint.explainer import train_explainer
from interp_ray.explainers.flint.interpretation import attributes_with_ground_truth, evaluate_model
from interp_ray.metrics.scene_attributes import scenes_attribute_table
from jobs.flint_inputs import flint_inputs, materialize


def run(cfg: FlintJobConfig, mode: str, seed: int, *, store_root: str | None = None, **flint: Any):
    """One training in this process. Post hoc, f's taps and the input are first extracted (without Ray) into
    activation stores under ``store_root``, which the training then reads, as the job's workers do."""
    from jobs.train_flint import posthoc_stores

    c = cfg.model_copy(deep=True)
    c.train.seed = seed
    c.flint = c.flint.model_copy(update={"mode": mode, **flint})
    t0 = time.perf_counter()
    stores = None
    if mode == "posthoc":
        c.store = c.store.model_copy(update={"root": store_root})
        c.compute = c.compute.model_copy(update={"engine": "local"})
        stores = posthoc_stores(c)
    explainer, history = train_explainer(c, flint_inputs(c), stores=stores)
    return explainer, history, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/flint_digits.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default=None, help="results folder (default outputs/flint_eval_<dataset>)")
    p.add_argument("--pictures", action="store_true", help="write the first seed's pictures")
    p.add_argument("--max-pairs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(FlintJobConfig, args.config, args.overrides)
    if cfg.scaling.use_gpu == "auto" and not torch.cuda.is_available():
        cfg.scaling.use_gpu = False
    out = Path(args.out or f"outputs/flint_eval_{cfg.data.name}")
    out.mkdir(parents=True, exist_ok=True)
    from interp_ray.checkpoint import save_classifier
    from interp_ray.data import load_dataset

    test_ds = materialize(load_dataset(cfg.data.name, "test", **cfg.data.options), cfg.materialize_rows)
    tau = cfg.flint.tau
    results: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "seeds": {}}
    print(f"dataset: {cfg.data.name} {cfg.data.options} (test rows {len(test_ds)}), model {cfg.model.name}, "
          f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr {cfg.train.lr}, schedule {cfg.flint.schedule}")
    for seed in args.seeds:
        base, base_hist, base_s = run(cfg, "base", seed)
        m_base = evaluate_model(base.flint, test_ds, taus=[tau])
        flint, flint_hist, flint_s = run(cfg, "joint", seed)
        m_flint = evaluate_model(flint.flint, test_ds, taus=cfg.flint.taus)
        with tempfile.TemporaryDirectory() as d:
            save_classifier(Path(d) / "base_f", base.flint.predictor, model_name=base.config["model"]["name"],
                            model_options=base.config["model"]["options"], class_names=base.class_names)
            post, post_hist, post_s = run(cfg, "posthoc", seed, store_root=str(Path(d) / "activations"),
                                          predictor_checkpoint=str(Path(d) / "base_f"))
        m_post = evaluate_model(post.flint, test_ds, taus=cfg.flint.taus)
        row = {"base": m_base, "flint": m_flint, "posthoc": m_post, "seconds": {"base": base_s, "flint": flint_s,
                                                                             "posthoc": post_s},
               "history": {"base": base_hist, "flint": flint_hist, "posthoc": post_hist}}
        print(f"seed {seed}:")
        print(f"  base_f_accuracy: {m_base['accuracy_f']:.4f}   ({base_s:.0f} s)")
        print(f"  flint_f_accuracy: {m_flint['accuracy_f']:.4f}   ({flint_s:.0f} s)")
        print(f"  flint_g_accuracy: {m_flint['accuracy_g']:.4f}")
        print(f"  flint_fidelity: {m_flint['fidelity']:.4f}")
        print("  flint_cns: " + ", ".join(f"tau={t:g} {m_flint[f'cns_{t:g}']:.2f}" for t in cfg.flint.taus))
        print("  flint_cns_code_reading: " + ", ".join(f"tau={t:g} {m_flint[f'cns_code_{t:g}']:.2f}"
                                                       for t in cfg.flint.taus))
        print(f"  posthoc_fidelity: {m_post['fidelity']:.4f}   (f = BASE-f, accuracy {m_post['accuracy_f']:.4f}; "
              f"g accuracy {m_post['accuracy_g']:.4f}; CNS(tau={tau:g}) {m_post[f'cns_{tau:g}']:.2f}; {post_s:.0f} s)")
        if seed == args.seeds[0]:
            if "attributes" in test_ds.get_batch([0]):
                row["matches"] = {name: scenes_attribute_table(*attributes_with_ground_truth(ex.flint, test_ds),
                                                               ex.attribute_names)
                                  for name, ex in (("flint", flint), ("posthoc", post))}
                flint.config["attribute_matches"] = row["matches"]["flint"]
                print_matches("joint FLINT", row["matches"]["flint"], flint, tau)
                print_matches("post-hoc FLINT", row["matches"]["posthoc"], post, tau)
            flint.save(str(out / "flint_joint"))
            post.save(str(out / "flint_posthoc"))
            print("  global interpretation (joint, tau=%g): " % tau + "; ".join(
                f"{c}: {', '.join(a for a, _ in attrs)}" for c, attrs in flint.global_interpretation(tau).items()))
            if args.pictures:
                row["pictures"] = pictures(flint, cfg, test_ds, out / "pictures", args.max_pairs)
                print(f"  pictures: {len(row['pictures'])} in {out / 'pictures'}")
        results["seeds"][str(seed)] = row
    keys = [("base", "accuracy_f"), ("flint", "accuracy_f"), ("flint", "accuracy_g"), ("flint", "fidelity"),
            ("flint", f"cns_{tau:g}"), ("posthoc", "fidelity"), ("posthoc", "accuracy_g"), ("posthoc", f"cns_{tau:g}")]
    print(f"mean over seeds {args.seeds}:")
    summary = {}
    for run_name, key in keys:
        vals = [results["seeds"][str(s)][run_name][key] for s in args.seeds]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        summary[f"{run_name}_{key}"] = {"mean": statistics.fmean(vals), "sd": sd, "values": vals}
        print(f"  {run_name}_{key}: {statistics.fmean(vals):.4f} (sd {sd:.4f}; {', '.join(f'{v:.4f}' for v in vals)})")
    diff = [100 * (results["seeds"][str(s)]["flint"]["accuracy_f"] - results["seeds"][str(s)]["base"]["accuracy_f"])
            for s in args.seeds]
    summary["flint_f_minus_base_f_points"] = {"mean": statistics.fmean(diff), "values": diff}
    print(f"  flint_f_minus_base_f_points: {statistics.fmean(diff):+.2f} ({', '.join(f'{d:+.2f}' for d in diff)})")
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out / 'results.json'}")


def print_matches(title: str, matches: list[dict], explainer, tau: float) -> None:
    """The attribute → ground-truth table, with the classes for which each attribute is globally relevant."""
    rel_classes: dict[str, list[str]] = {}
    for cls, attrs in explainer.global_interpretation(tau).items():
        for a, _ in attrs:
            rel_classes.setdefault(a, []).append(cls)
    print(f"  attribute matches, {title} (Pearson r over the test split):")
    print(f"    {'attribute':<9} {'best match':<17} {'r':>5}   {'runner-up':<17} {'r':>5}   relevant for (tau={tau:g})")
    for m in matches:
        if m["match"] is None:
            print(f"    {m['attribute']:<9} (inactive: constant on the test split)")
            continue
        classes = ", ".join(rel_classes.get(m["attribute"], [])) or "-"
        print(f"    {m['attribute']:<9} {m['match']:<17} {m['corr']:5.2f}   {m['second']:<17} {m['second_corr']:5.2f}"
              f"   {classes}")


def pictures(explainer, cfg: FlintJobConfig, test_ds, folder: Path, max_pairs: int) -> list[dict]:
    from interp_ray.data import load_dataset
    from interp_ray.explainers.flint.plots import write_global_pictures, write_local_sheet

    train_ds = materialize(load_dataset(cfg.data.name, "train", **cfg.data.options), cfg.materialize_rows)
    recs = write_global_pictures(explainer, train_ds, folder, tau=cfg.flint.tau, am=cfg.pictures.am,
                                 n_mas=cfg.flint.n_mas, samples=cfg.flint.relevance_samples, max_pairs=max_pairs)
    for i in range(3):
        path, _ = write_local_sheet(explainer, test_ds.get_batch([i])["image"][0], folder / f"local_test{i}.png",
                                    tau=cfg.flint.tau, am=cfg.pictures.am)
        recs.append({"class": None, "attribute": None, "relevance": None, "path": path})
    return recs


if __name__ == "__main__":
    main()
