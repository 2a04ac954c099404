"""The classifiers stage: every enabled entry of ``classifiers`` trained on Ray Train; the explainer stages get
their checkpoints (``ctx.checkpoint(key)``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from interp_ray.checkpoint import join_uri
from interp_ray.config import ClassifierJobConfig
from jobs.pipeline.engine import Context, PipelineConfig, pipeline_stage, plural, progress, reports


@pipeline_stage("classifiers", order=0)   # first: every other stage explains one of its checkpoints
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
        t0 = progress(f"training classifier {key} ({job.model.name} on {job.data.name}, "
                      f"{plural(job.train.epochs, 'epoch')})")
        res = train(job)
        ctx.checkpoints[key] = res["checkpoint"]
        results[key] = {"model": job.model.name, "dataset": job.data.name, "epochs": len(res["history"]),
                        "test_accuracy": res["test_accuracy"], "checkpoint": res["checkpoint"],
                        "seconds": time.perf_counter() - t0}
        print(f"[pipeline] {key}: test accuracy {res['test_accuracy']:.4f}", flush=True)
    return results


@reports("classifiers")
def report_classifiers(r: dict[str, Any], root: Path) -> list[str]:
    lines = ["## Classifiers (Ray Train)", "", "| name | model | dataset | epochs | test accuracy | time (s) |",
             "|---|---|---|---|---|---|"]
    for key, c in r.items():
        lines.append(f"| {key} | {c['model']} | {c['dataset']} | {c['epochs']} | {c['test_accuracy']:.4f} "
                     f"| {c['seconds']:.0f} |")
    return lines
