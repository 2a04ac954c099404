"""The saliency stage: Guided Feature Inversion and the Captum baselines over a dataset on Ray Data into Parquet
explanation stores, then evaluated (``jobs.explain_dataset``), and its report section."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from interp_ray.checkpoint import join_uri
from interp_ray.errors import UserError
from jobs.pipeline.engine import Context, PipelineConfig, StageRef, pipeline_stage, progress, rel_path, reports


@pipeline_stage("saliency", job="jobs.explain_dataset:ExplainDatasetConfig",
                default=StageRef(config="configs/explain_scenes.yaml", classifier="scenes"))
def run_saliency(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.saliency_report import markdown_table
    from jobs.explain_dataset import ExplainDatasetConfig, explain_dataset

    ref = cfg.ref(ctx.stage)
    out = ctx.local / ctx.stage
    job = ref.load(ExplainDatasetConfig, smoke=ctx.smoke, forced={
        "checkpoint": ctx.checkpoint(ref.classifier), "store.root": join_uri(ctx.out, "explanations"),
        "evaluation.output": str(out)})
    names = ", ".join(m.name for m in job.methods)
    t0 = progress(f"saliency ({names}) over {job.data.name}/{job.split} on Ray Data into Parquet, then evaluated")
    r = explain_dataset(job)
    if r.results is None:
        raise UserError("saliency: the stage needs evaluation.enabled (its table is the stage's result)")
    for name, m in r.results["methods"].items():
        figure = (f"pointing game {m['pointing']:.3f}" if "pointing" in m else
                  f"deletion AUC {m.get('deletion_auc', float('nan')):.3f}")
        print(f"[pipeline] {ctx.stage} {name}: {figure}", flush=True)
    return {"table": markdown_table(r.results), "rows": r.results["rows"], "split": r.results["split"],
            "dataset": job.data.name,
            "target": r.results["target"], "alpha_source": r.results["alpha_source"],
            "methods": {n: {k: v for k, v in m.items() if not isinstance(v, dict)}
                        for n, m in r.results["methods"].items()},
            "overlays": [str(out / p) for p in r.results.get("overlays", [])],
            "params": {m.name: m.params for m in job.methods},
            "stores": r.stores, "seconds": time.perf_counter() - t0}


@reports("saliency")
def report_saliency(r: dict[str, Any], root: Path) -> list[str]:
    computed = sum(s["computed_rows"] for s in r["stores"])
    lines = [f"## Saliency: Guided Feature Inversion and baselines ({r.get('dataset', 'scenes')}, {r['rows']} "
             f"{r['split']} images, {r['target']} class)", "",
             f"Masks computed on Ray Data into Parquet explanation stores ({computed} rows computed in this run; "
             f"α {r['alpha_source'] or '—'}).", "", r["table"], ""]
    lines += [f"![{Path(p).stem}]({rel_path(p, root)})" for p in r["overlays"]]
    return lines
