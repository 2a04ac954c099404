"""Saliency evaluation on generated scenes: every method on the same trained scenes CNN and the same images.

    python -m benchmarks.saliency_eval [--model /tmp/interp-ray-scenes-cnn] [--n-test 120] [--n-tune 48]
                                       [--n-two 60] [--out outputs/saliency]

* pointing game (no tolerance) and localisation error (α·mean threshold, IoU > 0.5; α tuned per method on the
  ``--n-tune`` val images, as the paper tunes it on held-out training images) on ``--n-test`` one-object test
  scenes, explaining the true class; deletion and insertion AUC (RISE protocol) on the same images;
* class discrimination on ``--n-two`` two-object test scenes: the stage-2 GFI mask for class A must peak in A's box
  and the one for B in B's box, while the stage-1 mask covers both (its maximum inside each box is >= 0.5).

Prints a markdown table (pasted into docs/saliency.md) and ``name: value`` lines; writes overlays to ``--out``.
The model is trained first (benchmarks.scenes_model, a few CPU minutes) if ``--model`` holds no checkpoint.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.scenes_model import DEFAULT_PATH, load_or_train

GFI_NAME = "feature_inversion"


@dataclass
class MethodMaps:
    """One method's maps on the tuning and test images, and its explain time per test image."""

    name: str
    tune: list[np.ndarray]
    test: list[np.ndarray]
    seconds_per_image: float
    notes: dict = field(default_factory=dict)


def explain_all(explainer, images: np.ndarray, targets: np.ndarray, params: dict | None = None,
                batch_size: int = 32) -> tuple[list, float]:
    """Explanations of every image (in batches) and the seconds per image."""
    out, t0 = [], time.perf_counter()
    for lo in range(0, len(images), batch_size):
        out += explainer.explain({"image": images[lo:lo + batch_size], "target": targets[lo:lo + batch_size]},
                                 params)
    return out, (time.perf_counter() - t0) / max(len(images), 1)


def build_methods(model, class_names):
    from interp_ray.explainers import get_explainer

    return {
        "center": get_explainer("center")(model, class_names=class_names),
        "gradient": get_explainer("gradient")(model, class_names=class_names),
        "gradcam": get_explainer("gradcam")(model, class_names=class_names),
        "occlusion": get_explainer("occlusion")(model, class_names=class_names),
        "gfi (paper)": get_explainer(GFI_NAME)(model, class_names=class_names),
        "gfi (code variant)": get_explainer(GFI_NAME)(model, variant="code", class_names=class_names),
    }


def collect_maps(methods: dict, tune: dict, test: dict) -> list[MethodMaps]:
    """Maps of every method, plus two rows derived from the paper GFI run (stage 1 alone; no fallback)."""
    rows = []
    for name, explainer in methods.items():
        params = {"return_stage1": True} if name.startswith("gfi") else None
        tune_e, _ = explain_all(explainer, tune["image"], tune["label"], params)
        test_e, sec = explain_all(explainer, test["image"], test["label"], params)
        print(f"# {name}: {sec:.3f} s/image", flush=True)
        rows.append(MethodMaps(name, [e.saliency for e in tune_e], [e.saliency for e in test_e], sec))
        if name == "gfi (paper)":
            fallbacks = sum(e.extra["fallback"] for e in test_e)
            rows[-1].notes["fallbacks"] = fallbacks
            rows.append(MethodMaps("gfi (paper), no fallback", [_stage2(e) for e in tune_e],
                                   [_stage2(e) for e in test_e], sec))
            rows.append(MethodMaps("gfi stage 1 only", [e.extra["stage1_saliency"] for e in tune_e],
                                   [e.extra["stage1_saliency"] for e in test_e], sec))
    return rows


def _stage2(e) -> np.ndarray:
    """The stage-2 mask whether or not the fallback replaced it."""
    return e.extra.get("stage2_saliency", e.saliency)


def score(model, rows: list[MethodMaps], tune: dict, test: dict) -> list[dict]:
    from interp_ray.metrics.saliency import causal_curves, localisation_error, pointing_game, tune_alpha

    table = []
    for row in rows:
        pg = pointing_game(row.test, test["boxes"], test["box_labels"], test["label"])
        alpha, _ = tune_alpha(row.tune, tune["boxes"], tune["box_labels"], tune["label"])
        loc = localisation_error(row.test, test["boxes"], test["box_labels"], test["label"], alpha=alpha)
        dele, ins = [], []
        for lo in range(0, len(row.test), 40):  # 40 images × 33 steps at a time keeps memory small
            curves = causal_curves(model, test["image"][lo:lo + 40], np.stack(row.test[lo:lo + 40]),
                                   test["label"][lo:lo + 40])
            dele.append(curves.deletion_auc)
            ins.append(curves.insertion_auc)
        table.append({"method": row.name, "pointing": pg["accuracy"], "pointing_class_mean": pg["class_mean"],
                      "alpha": alpha, "loc_error": loc, "deletion_auc": float(np.concatenate(dele).mean()),
                      "insertion_auc": float(np.concatenate(ins).mean()), "s_per_image": row.seconds_per_image,
                      **row.notes})
    return table


def two_object_check(model, two: dict, class_names, out: Path | None) -> dict[str, float]:
    """Class discrimination (Du et al. Fig. elephant/zebra) for GFI (paper; log-prob score) and Grad-CAM."""
    from interp_ray.explainers import get_explainer
    from interp_ray.metrics.saliency import class_discrimination
    from interp_ray.plots import save_overlays

    a, b = two["box_labels"][:, 0], two["box_labels"][:, 1]
    results = {}
    configs = {"gfi (paper)": (get_explainer(GFI_NAME)(model), {"return_stage1": True}),
               "gfi (log_prob)": (get_explainer(GFI_NAME)(model, class_score="log_prob"), {"return_stage1": True}),
               "gradcam": (get_explainer("gradcam")(model), None)}
    for name, (explainer, params) in configs.items():
        ea, _ = explain_all(explainer, two["image"], a, params)
        eb, _ = explain_all(explainer, two["image"], b, params)
        stage1 = [e.extra["stage1_saliency"] for e in ea] if params else None
        res = class_discrimination([e.saliency for e in ea], [e.saliency for e in eb], stage1, two["boxes"],
                                   two["box_labels"])
        shown = min(len(a), 6) if out is not None and params else 0
        for i in range(shown):
            maps = [ea[i].extra["stage1_saliency"], ea[i].saliency, eb[i].saliency]
            save_overlays(out / f"two_{_slug(name)}_{i}.png", two["image"][i], maps,
                          titles=["stage 1", f"stage 2: {class_names[a[i]]}", f"stage 2: {class_names[b[i]]}"],
                          boxes=two["boxes"][i])
        results[name] = {"both_peaks_in_own_box": res["both_peaks_in_own_box"],
                         "stage1_covers_both": res.get("stage1_covers_both", float("nan"))}
    return results


def _slug(name: str) -> str:
    """'gfi (paper), no fallback' → 'gfi_paper_no_fallback' (file names and ``name: value`` keys)."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in name).split())


def markdown(table: list[dict]) -> str:
    lines = ["| method | pointing game ↑ | pointing (class mean) ↑ | α (tuned) | localisation error ↓ | "
             "deletion AUC ↓ | insertion AUC ↑ | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['pointing']:.3f} | {r['pointing_class_mean']:.3f} | {r['alpha']:.1f} | "
                     f"{r['loc_error']:.3f} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | "
                     f"{r['s_per_image']:.3f} |")
    return "\n".join(lines)


def save_examples(rows: list[MethodMaps], test: dict, out: Path, k: int = 6) -> None:
    from interp_ray.plots import save_overlays

    for i in range(min(k, len(test["image"]))):
        save_overlays(out / f"test_{i}.png", test["image"][i], [r.test[i] for r in rows],
                      titles=[r.name for r in rows], boxes=test["boxes"][i])


def main(argv: list[str] | None = None) -> None:
    from interp_ray.data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_PATH)
    ap.add_argument("--n-test", type=int, default=120)
    ap.add_argument("--n-tune", type=int, default=48)
    ap.add_argument("--n-two", type=int, default=60)
    ap.add_argument("--out", default="outputs/saliency")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU is shared)")
    ap.add_argument("--two-only", action="store_true", help="only the two-object class-discrimination check")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_or_train(args.model)
    model, names = loaded.model, loaded.class_names
    out = Path(args.out)
    test = load_dataset("scenes", "test", n=args.n_test).get_batch(np.arange(args.n_test))
    tune = load_dataset("scenes", "val", n=args.n_tune).get_batch(np.arange(args.n_tune))
    two = load_dataset("scenes", "test", n=args.n_two, two_objects=True).get_batch(np.arange(args.n_two))
    if args.two_only:
        for name, res in two_object_check(model, two, names, out).items():
            for metric, value in res.items():
                print(f"two_objects.{_slug(name)}.{metric}: {value:.4f}")
        return
    rows = collect_maps(build_methods(model, names), tune, test)
    table = score(model, rows, tune, test)
    save_examples(rows, test, out)
    two_results = two_object_check(model, two, names, out)
    print(f"\nscenes test, {args.n_test} one-object images (α tuned on {args.n_tune} val images); model "
          f"{args.model} (val accuracy {loaded.config.get('metrics', {}).get('val_accuracy')})\n")
    print(markdown(table))
    print()
    for r in table:
        key = _slug(r["method"])
        print(f"{key}.pointing: {r['pointing']:.4f}")
        if "fallbacks" in r:
            print(f"{key}.fallbacks: {r['fallbacks']}")
    for name, res in two_results.items():
        key = _slug(name)
        for metric, value in res.items():
            print(f"two_objects.{key}.{metric}: {value:.4f}")
    gfi = next(r for r in table if r["method"] == "gfi (paper)")
    cam = next(r for r in table if r["method"] == "gradcam")
    ctr = next(r for r in table if r["method"] == "center")
    print(f"ratio gfi/gradcam pointing: {gfi['pointing'] / max(cam['pointing'], 1e-9):.3f}")
    print(f"ratio gfi/center pointing: {gfi['pointing'] / max(ctr['pointing'], 1e-9):.3f}")
    print(f"overlays: {out}/")


if __name__ == "__main__":
    main()
