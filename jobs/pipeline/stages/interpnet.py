"""InterpNET's stage: activations into the store, training on Ray Train, scoring with pycocoevalcap
(``jobs.evaluate``), and its report section."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.pipeline.engine import Context, PipelineConfig, StageRef, pipeline_stage, progress, reports


@pipeline_stage("interpnet", job="interp_ray.explainers.interpnet.config:InterpNETTrainJob",
                default=StageRef(config="configs/interpnet_scenes.yaml", classifier="scenes"))
def run_interpnet(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.explainers.interpnet.config import InterpNETTrainJob
    from jobs.evaluate import evaluate, format_table

    job = ctx.learned_job(cfg, InterpNETTrainJob, output="evaluate.output_dir")
    t0 = progress(f"InterpNET on {job.source.data.name} ({', '.join(job.evaluate.variants)}): activations into the "
                  f"store, training on Ray Train from it, then scoring with pycocoevalcap")
    r = evaluate(job)
    scores = [f"{row['variant']} METEOR {row.get('meteor_segment_mean', float('nan')) * 100:.1f}" for row in r["rows"]]
    print(f"[pipeline] InterpNET: {'; '.join(scores)}", flush=True)
    return {"table": format_table(r), "rows": [{k: v for k, v in row.items() if not isinstance(v, (dict, list))}
                                                for row in r["rows"]],
            "samples": r["samples"], "test_images": r["test_images"],
            "image_model_accuracy": r["image_model_accuracy"], "seconds": time.perf_counter() - t0}


@reports("interpnet")
def report_interpnet(r: dict[str, Any], root: Path) -> list[str]:
    lines = [f"## InterpNET ({r['test_images']} test images)", "", r["table"], "", "Sample explanations:", ""]
    for variant, items in r["samples"].items():
        lines += [f"- {variant}, `{s['id']}` (class {s['label']}): {s['sentence']}" for s in items[:4]]
    return lines
