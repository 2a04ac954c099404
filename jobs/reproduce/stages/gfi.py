"""Guided Feature Inversion's claims on the scenes analogue, one seed per call: the scenes classifier trained as the
main job's (``jobs.train_classifier`` on Ray Train, ``configs/scenes.yaml``, the seed as its training seed), then on
the same one-object test scenes GFI (δ = 1 and δ = 10), Grad-CAM (at its default layer, the last conv map a
practitioner reads: ``docs/saliency.md``), the gradient and the centre baseline: localisation error at α tuned on
held-out val scenes and at α = 0 (GFI 1, 2), the pointing game (GFI 3), each method's share of empty maps; the
two-object check over many scenes (GFI 4); GFI's seconds per image at batch 1 (GFI 5). ``rows`` gives GFI 1–6.

Section keys (``stages.gfi``):

    classifier: {config: configs/scenes.yaml, set: {train.epochs: 8}}   # the main job's (configs/pipeline.yaml)
    n_test: 40          # one-object test scenes scored
    n_tune: 16          # val scenes α is tuned on
    n_two: 20           # two-object test scenes (each explained for both classes)
    n_runtime: 4        # images timed one at a time
    two_object_target: 0.9
    gfi_settings: {}    # GFISettings overrides for every GFI run (tests shorten the iterations; {} = the paper's)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from interp_ray.reproduction import beyond_spread, fmt_mean_std, not_below
from jobs.reproduce.stages._common import classifier, job_config, row, seeds_phrase, values
from jobs.reproduce.stages._steps import cached

NAME = "gfi"
CLAIMS = tuple(f"GFI {i}" for i in range(1, 7))

# Du et al.'s figures (PAPERS.md §5)
PAPER_LOC_ERROR = {"gfi": 0.382, "gradient": 0.417, "cam": 0.481}
PAPER_POINTING = {"gfi": 0.547, "gradcam": 0.550, "gradient": 0.531, "center": 0.483}
METHODS = ("gfi_delta1", "gfi_delta10", "gradcam", "gradient", "center")


def _section(section: dict[str, Any]) -> dict[str, Any]:
    clf = {"config": "configs/scenes.yaml", "set": {"train.epochs": 8}, **(section.get("classifier") or {})}
    return {"n_test": 40, "n_tune": 16, "n_two": 20, "n_runtime": 4, "two_object_target": 0.9, "gfi_settings": {},
            **section,
            "classifier": clf}


def _classifier_ref(s: dict[str, Any], seed: int) -> dict[str, Any]:
    """The section's classifier with the seed as its training seed: one network per seed, trained once into
    ``<out>/shared`` (seed 0 is the very network the other scenes stages explain when they name the same config)."""
    ref = s["classifier"]
    return {**ref, "set": {**(ref.get("set") or {}), "train.seed": seed}}


def _scenes(s: dict[str, Any], seed: int, split: str, n: int, **extra: Any):
    """``n`` scenes of ``split`` generated as the classifier's data (same size and generator seed)."""
    from interp_ray.config import ClassifierJobConfig
    from interp_ray.data import load_dataset

    options = job_config(_classifier_ref(s, seed), ClassifierJobConfig, f"stages.{NAME}.classifier").data.options
    return load_dataset("scenes", split, **{**options, "n": n, **extra})


def _gfi(model, class_names, settings: dict[str, Any], **extra: Any):
    from interp_ray.explainers import get_explainer

    return get_explainer("feature_inversion")(model, class_names=class_names, **{**settings, **extra})


def _explainers(model, class_names, gfi_settings: dict[str, Any]) -> dict[str, Any]:
    from interp_ray.explainers import get_explainer

    return {"gfi_delta1": _gfi(model, class_names, gfi_settings, delta=1.0),
            "gfi_delta10": _gfi(model, class_names, gfi_settings, delta=10.0),
            "gradcam": get_explainer("gradcam")(model, class_names=class_names),
            "gradient": get_explainer("gradient")(model, class_names=class_names),
            "center": get_explainer("center")(model, class_names=class_names)}


def _maps(explainer, batch: dict[str, np.ndarray], targets: np.ndarray, params=None, size: int = 16) -> list:
    out = []
    for lo in range(0, len(targets), size):
        out += explainer.explain({"image": batch["image"][lo:lo + size], "target": targets[lo:lo + size]}, params)
    return out


def _saliency(s: dict[str, Any], clf: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """GFI 1–3 and the empty-map shares on the one-object scenes, every method on the same images."""
    from interp_ray.checkpoint import load_classifier
    from interp_ray.metrics.saliency import empty_share, localisation_error, pointing_game, tune_alpha

    loaded = load_classifier(clf["checkpoint"])
    test, tune = _scenes(s, seed, "test", int(s["n_test"])), _scenes(s, seed, "val", int(s["n_tune"]))
    tb, vb = test.get_batch(np.arange(len(test))), tune.get_batch(np.arange(len(tune)))
    out = {}
    methods = _explainers(loaded.model.eval(), loaded.class_names, s["gfi_settings"])
    for name, explainer in methods.items():
        t0 = time.perf_counter()
        test_maps = [e.saliency for e in _maps(explainer, tb, tb["label"])]
        seconds = (time.perf_counter() - t0) / len(test)
        tune_maps = [e.saliency for e in _maps(explainer, vb, vb["label"])]
        alpha, _ = tune_alpha(tune_maps, vb["boxes"], vb["box_labels"], vb["label"])
        args = (tb["boxes"], tb["box_labels"], tb["label"])
        out[name] = {"pointing": pointing_game(test_maps, *args)["accuracy"], "alpha": alpha,
                     "loc_error": localisation_error(test_maps, *args, alpha=alpha),
                     "loc_error_alpha0": localisation_error(test_maps, *args, alpha=0.0),
                     "empty_share": empty_share(test_maps), "seconds_per_image_batched": seconds}
    out["grad_cam_layer"] = methods["gradcam"].layer
    return out


def _two_objects(s: dict[str, Any], clf: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """GFI 4 over ``n_two`` two-object test scenes, each explained for both objects' classes (A, then B): does A's
    stage-2 map peak in A's box and B's in B's (``both_peaks_in_own_box``), and does the stage-1 map reach 0.5 inside
    both boxes (``stage1_covers_both``)? GFI with the paper's probability score, with the log-prob score, and
    Grad-CAM beside (the checks of ``benchmarks.saliency_eval``, here with the stage's GFI settings)."""
    from interp_ray.checkpoint import load_classifier
    from interp_ray.metrics.saliency import pointing_hit

    loaded = load_classifier(clf["checkpoint"])
    two = _scenes(s, seed, "test", int(s["n_two"]), two_objects=True)
    batch = two.get_batch(np.arange(len(two)))
    a, b = batch["box_labels"][:, 0], batch["box_labels"][:, 1]
    methods = _explainers(loaded.model.eval(), loaded.class_names, s["gfi_settings"])
    methods["gfi_log_prob"] = _gfi(loaded.model, loaded.class_names, s["gfi_settings"], class_score="log_prob")
    out: dict[str, Any] = {"scenes": len(two)}
    for name in ("gfi_delta1", "gfi_log_prob", "gradcam"):
        params = {"return_stage1": True} if name.startswith("gfi") else None
        ea, eb = _maps(methods[name], batch, a, params), _maps(methods[name], batch, b, params)
        both = [pointing_hit(ea[i].saliency, batch["boxes"][i, :1], batch["box_labels"][i, :1], int(a[i]))
                and pointing_hit(eb[i].saliency, batch["boxes"][i, 1:], batch["box_labels"][i, 1:], int(b[i]))
                for i in range(len(a))]
        out[name] = {"both_peaks_in_own_box": float(np.mean(both))}
        if params:
            out[name]["stage1_covers_both"] = float(np.mean([
                all(e.extra["stage1_saliency"][y0:y1, x0:x1].max() >= 0.5 for x0, y0, x1, y1 in batch["boxes"][i])
                for i, e in enumerate(ea)]))
    return out


def _runtime(s: dict[str, Any], clf: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """GFI 5: seconds per image of GFI (paper settings) explaining one image at a time on this machine."""
    import torch

    from interp_ray.checkpoint import load_classifier

    loaded = load_classifier(clf["checkpoint"])
    n = int(s["n_runtime"])
    batch = _scenes(s, seed, "test", n).get_batch(np.arange(n))
    gfi = _gfi(loaded.model.eval(), loaded.class_names, s["gfi_settings"])
    gfi.explain({"image": batch["image"][:1], "target": batch["label"][:1]})   # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        gfi.explain({"image": batch["image"][i:i + 1], "target": batch["label"][i:i + 1]})
    return {"seconds_per_image": (time.perf_counter() - t0) / n, "images": n, "torch_threads": torch.get_num_threads(),
            "precision": gfi.settings.precision}


def run(section: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    s = _section(section)
    workdir = Path(workdir)
    ckpt, meta = classifier(_classifier_ref(s, seed), workdir, f"stages.{NAME}.classifier")
    clf = {**meta, "checkpoint": ckpt}
    print(f"[reproduce] {NAME} seed {seed}: scenes classifier test accuracy {clf['test_accuracy']:.4f}", flush=True)
    return {"classifier": clf,
            "saliency": cached(workdir, "saliency", lambda: _saliency(s, clf, seed, workdir)),
            "two_objects": cached(workdir, "two_objects", lambda: _two_objects(s, clf, seed, workdir)),
            "runtime": cached(workdir, "runtime", lambda: _runtime(s, clf, seed, workdir)),
            "budget": {"n_test": int(s["n_test"]), "n_tune": int(s["n_tune"]), "n_two": int(s["n_two"])}}


# ---------------------------------------------------------------------------------------------------------------
# Report rows
# ---------------------------------------------------------------------------------------------------------------

def _f(values: list[float]) -> str:
    return fmt_mean_std(values, digits=3)


def rows(per_seed: dict[int, dict], section: dict) -> list[dict]:
    s = _section(section)
    first = next(iter(per_seed.values()))
    b = first["budget"]
    acc = values(per_seed, "classifier", "test_accuracy")
    setup = (seeds_phrase(per_seed) + f"; per seed the scenes CNN trained by "
             f"jobs.train_classifier on Ray Train as the main job's ({s['classifier']['config']}, the seed as its "
             f"training seed; test accuracy {_f(acc)}); {b['n_test']} one-object test scenes, α tuned on "
             f"{b['n_tune']} val scenes; GFI at the paper's settings (10 + 70 iterations, blur background), Grad-CAM "
             f"at `{first['saliency']['grad_cam_layer']}` (its default: the last conv map, the layer a practitioner "
             f"reads)" + (f"; GFI settings changed: {s['gfi_settings']}" if s["gfi_settings"] else ""))
    sal = {m: {k: values(per_seed, "saliency", m, k) for k in ("pointing", "loc_error", "loc_error_alpha0",
                                                           "empty_share")} for m in METHODS}
    empty = "; ".join(f"{m} {_f(sal[m]['empty_share'])}" for m in METHODS)
    out = []

    gfi_err = sal["gfi_delta1"]["loc_error"]
    ok1 = beyond_spread(sal["gradcam"]["loc_error"], gfi_err) and beyond_spread(sal["gradient"]["loc_error"], gfi_err)
    out.append(row("GFI 1", "Weakly-supervised localisation error lower than the gradient and CAM "
                   "baselines (38.2% at α ≈ 1.5 on ImageNet; scenes analogue)",
                   "GFI 38.2%, Grad 41.7%, CAM 48.1% (ImageNet val, VGG-19)",
                   "; ".join(f"{m} {_f(sal[m]['loc_error'])}" for m in METHODS),
                   "met" if ok1 else "not met",
                   (f"{setup}. Error = 1 − share of scenes whose α·mean box has IoU > 0.5 with the class's box. "
                    f"Met when GFI (δ = 1) has a lower error than Grad-CAM and the gradient beyond the seeds' "
                    f"spread. Empty-map shares: {empty}.")))

    acc0 = [1 - e for e in sal["gfi_delta1"]["loc_error_alpha0"]]
    acc_t = [1 - e for e in gfi_err]
    out.append(row("GFI 2", "At α = 0 (no thresholding) GFI's localisation accuracy is already "
                   "≈ 49.9%, below its tuned-α accuracy", "49.9% at α = 0, 61.8% at α = 1.5",
                   f"α = 0: {_f(acc0)}; tuned α: {_f(acc_t)}",
                   "met" if beyond_spread(acc_t, acc0) else "not met",
                   (f"{setup}. The figure itself is not comparable (ImageNet vs scenes); the checkable part is "
                    f"that thresholding at the tuned α localises better than α = 0: met when tuned > α = 0 "
                    f"beyond the seeds' spread.")))

    p10, p1 = sal["gfi_delta10"]["pointing"], sal["gfi_delta1"]["pointing"]
    ok3 = (not_below(p10, sal["gradcam"]["pointing"]) and not_below(p10, sal["gradient"]["pointing"])
           and beyond_spread(p10, sal["center"]["pointing"]))
    out.append(row("GFI 3", "Pointing game (δ = 10): GFI ≈ Grad-CAM, above the gradient and "
                   "the centre baseline", "GFI 0.547, Grad-CAM 0.550, Grad 0.531, centre 0.483 (VOC07)",
                   (f"GFI δ = 10 {_f(p10)}; GFI δ = 1 {_f(p1)}; Grad-CAM {_f(sal['gradcam']['pointing'])}; "
                    f"gradient {_f(sal['gradient']['pointing'])}; centre {_f(sal['center']['pointing'])}"),
                   "met" if ok3 else "not met",
                   (f"{setup}. Hit = the map's maximum inside the class's box, no tolerance. Met when GFI "
                    f"(δ = 10) is not below Grad-CAM or the gradient beyond the spread (not_below) and above "
                    f"the centre baseline beyond it. Empty-map shares: {empty}.")))

    both = values(per_seed, "two_objects", "gfi_delta1", "both_peaks_in_own_box")
    cover = values(per_seed, "two_objects", "gfi_delta1", "stage1_covers_both")
    cam = values(per_seed, "two_objects", "gradcam", "both_peaks_in_own_box")
    logp = values(per_seed, "two_objects", "gfi_log_prob", "both_peaks_in_own_box")
    target = float(s["two_object_target"])
    ok4 = min(both) >= target and min(cover) >= target
    out.append(row("GFI 4", "Two objects: the stage-2 masks for the two classes pick different "
                   "objects, the stage-1 mask covers both", "shown on one elephant/zebra image",
                   (f"both stage-2 peaks in their own box {_f(both)}, stage 1 covers both {_f(cover)} "
                    f"(log-prob class score: {_f(logp)}; Grad-CAM {_f(cam)})"),
                   "met" if ok4 else "not met",
                   (f"{setup}. Over {b['n_two']} two-object test scenes per seed, each explained for both "
                    f"objects' classes by the classifier trained on one-object scenes as the main job's. Met when "
                    f"every seed reaches {target:.0%} on both shares.")))

    rt = values(per_seed, "runtime", "seconds_per_image")
    out.append(row("GFI 5", "Run time ≈ 8 s per image (VGG-19, batch 1)",
                   "8.04 s (VGG-19, PyTorch GPU)", f"{_f(rt)} s per image (scenes CNN, 64×64, CPU)",
                   "not tested",
                   (f"GFI (paper settings, {first['runtime']['precision']}) one image at a time on this 2-core "
                    f"CPU ({first['runtime']['torch_threads']} torch thread(s)), {first['runtime']['images']} "
                    f"images per seed. Not comparable: another network, input size and device.")))
    out.append(row("GFI 6", "Stage-1 masks detect salient objects on MSRA-B slightly better than SS "
                   "and SIM", "F_β and MAE in a figure", "—", "not tested",
                   ("No MSRA-B here, and the baselines (SS, SIM, RC, FT, SF, BL) are not implemented; a scenes "
                    "analogue would compare stage 1 against nothing the paper compared with, so it is not run.")))
    return out
