"""CNN-INTE's stage: activations into the store, then the two-level clustering + random forest meta-model
(``jobs.fit_cnn_inte``), and its report section."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.pipeline.engine import Context, PipelineConfig, StageRef, pipeline_stage, progress, rel_path, reports


@pipeline_stage("cnn_inte", job="jobs.fit_cnn_inte:CnnInteJobConfig",
                default=StageRef(config="configs/cnn_inte_digits.yaml", classifier="digits"))
def run_cnn_inte(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from jobs.fit_cnn_inte import CnnInteJobConfig, fit, with_layer

    ref, job = ctx.job(cfg, CnnInteJobConfig, checkpoint="checkpoint", store="store.root", output="output")
    job = with_layer(job)
    t0 = progress(f"CNN-INTE on {job.data.name} ({ref.classifier} classifier, layer {job.cnn_inte.layer}): "
                  f"extracting activations into the store, then fitting")
    r = fit(job)
    r["dataset"], r["seconds"] = job.data.name, time.perf_counter() - t0
    test = r["splits"][job.eval_splits[0]]
    print(f"[pipeline] {ctx.stage}: fidelity {test['fidelity']:.4f} on {job.eval_splits[0]}", flush=True)
    return r


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
    routes = r.get("routes") or []
    if routes:
        agree = sum(x["label"] == x["votes_argmax"] == x["prediction"] for x in routes)
        lines += ["", f"Route diagrams: the label drawn and the largest forest vote drawn equal the meta-model's "
                      f"prediction for the row in {agree} of {len(routes)}."]
    lines += [""] + [f"![{Path(p).stem}]({rel_path(p, root)})" for p in r["pictures"]]
    return lines
