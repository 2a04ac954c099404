"""FLINT's stage (``jobs.train_flint``): joint or post hoc, its BASE-f check against the classifier the entry
names, LIME beside FLINT-g on the same f (FLINT's Table 1 comparison), and its report section."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from interp_ray.checkpoint import join_uri
from interp_ray.config import ClassifierJobConfig
from interp_ray.errors import UserError
from jobs.pipeline.engine import (Context, JobRef, PipelineConfig, pipeline_stage, plural, progress, rel_path,
                                  reports)

SMOKE_LIME_IMAGES = 8   # LIME runs 1,000 forward passes of f per image
# What BASE-f must share with FLINT-f's training (besides model and data) for the comparison to mean anything
BUDGET_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "seed", "augment_shift")


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
        optimisation budget) with L_pred alone; a mismatch is a config error, not a comparison. And like the job,
        the entry must train g: its fidelity term has to turn on within its epochs."""
        job.check_fidelity_trained(f"{name}: ")
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
    t0 = progress(f"FLINT ({mode}) on {job.data.name}, {plural(job.train.epochs, 'epoch')} on Ray Train"
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
            "pictures_enabled": job.pictures.enabled,
            # per pictured pair, φ_j on its MAS and AM+PI images against random training images (FLINT 6's check)
            "picture_checks": [{"class": p["class"], "attribute": p["attribute"], **p["activation"]}
                               for p in r.get("pictures") or [] if "activation" in p],
            "checkpoint": r["checkpoint"], "classifier": ref.classifier,
            **extra, "seconds": time.perf_counter() - t0}


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

    def lime_progress(done: int) -> None:
        if done % 50 == 0:
            print(f"[pipeline] LIME: {done} of {n} images ({time.perf_counter() - t0:.0f} s)", flush=True)

    lime = lime_predictions(torch_proba(flint.predictor), batch["image"], test.num_classes, seed=0,
                            progress=lime_progress)
    return {"lime_images": n, "lime_fidelity": float((lime == pf).mean()),
            "flint_fidelity_lime_images": float((pg == pf).mean()), "lime_seconds": time.perf_counter() - t0}


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else float("nan")


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
    checks = r.get("picture_checks") or []
    if checks:
        shown = sum(c["mas"] > c["random"] and c["am"] > c["random"] for c in checks)
        lines += ["", "What the pair pictures show: the attribute's mean activation φ_j on the pictured MAS images "
                      f"and on their AM+PI images is above its mean over random training images for {shown} of "
                      f"{len(checks)} pairs (median ratio MAS / random "
                      f"{_median([c['mas'] / c['random'] for c in checks if c['random'] > 0]):.1f})."]
    pics = r["pictures"][:6] + r["pictures"][-1:] if len(r["pictures"]) > 7 else r["pictures"]
    lines += [""] + [f"![{Path(p).stem}]({rel_path(p, root)})" for p in pics]
    if len(r["pictures"]) > len(pics):
        lines.append(f"\n({len(r['pictures'])} pictures in `{rel_path(str(Path(r['pictures'][0]).parent), root)}/`.)")
    return lines
