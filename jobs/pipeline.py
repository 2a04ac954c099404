"""The main job: everything end to end on the embedded default, then a Markdown report.

    python -m jobs.pipeline [--config configs/pipeline.yaml] [--smoke]

Stages run in order and each prints its progress; a stage's output is reused by the ones after it (the classifier
is trained once; activations are extracted once). ``--smoke`` shrinks every budget for tests.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from interp_ray.checkpoint import is_remote, join_uri, upload_dir
from interp_ray.config import ClassifierJobConfig, Section, load_config
from jobs.common import base_parser, exit_with, init_ray

log = logging.getLogger("interp_ray.pipeline")


class PipelineConfig(Section):
    output_dir: str = "outputs/pipeline"
    classifiers: dict[str, ClassifierJobConfig] = Field(default_factory=lambda: {
        "digits": ClassifierJobConfig.model_validate({
            "data": {"name": "digits"},
            "model": {"name": "digits_cnn", "options": {"hidden": 256}},
            "train": {"epochs": 40, "lr": 0.003, "weight_decay": 1e-4, "augment_shift": 1},
        }),
    })
    smoke_epochs: int = Field(2, gt=0)


def apply_smoke(cfg: PipelineConfig) -> PipelineConfig:
    """Tiny budgets everywhere: for tests and a quick look, not for numbers."""
    for job in cfg.classifiers.values():
        job.train.epochs = min(job.train.epochs, cfg.smoke_epochs)
    return cfg


def stage(name: str):
    print(f"[pipeline] {name} …", flush=True)
    return time.perf_counter()


def train_classifiers(cfg: PipelineConfig, out: str) -> dict[str, Any]:
    from jobs.train_classifier import train

    results = {}
    for key, job in cfg.classifiers.items():
        t0 = stage(f"training classifier {key} ({job.model.name} on {job.data.name}, {job.train.epochs} epochs)")
        job.output = join_uri(out, "checkpoints", key)
        job.run.storage_path = join_uri(out, "ray_runs")  # shared storage when workers span nodes (s3://, gs://)
        res = train(job)
        results[key] = {"model": job.model.name, "dataset": job.data.name, "epochs": len(res["history"]),
                        "test_accuracy": res["test_accuracy"], "checkpoint": res["checkpoint"],
                        "seconds": time.perf_counter() - t0}
        print(f"[pipeline] {key}: test accuracy {res['test_accuracy']:.4f}", flush=True)
    return results


def write_report(out: Path, classifiers: dict[str, Any], seconds: float) -> Path:
    lines = ["# interp-ray pipeline report", "", f"Run time: {seconds:.0f} s", "", "## Classifiers", "",
             "| name | model | dataset | epochs | test accuracy | train time (s) |", "|---|---|---|---|---|---|"]
    for key, r in classifiers.items():
        lines.append(f"| {key} | {r['model']} | {r['dataset']} | {r['epochs']} | {r['test_accuracy']:.4f} "
                     f"| {r['seconds']:.0f} |")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"classifiers": classifiers, "seconds": seconds}, indent=2))
    return report


def run(cfg: PipelineConfig) -> str:
    """Run every stage; ``output_dir`` may be local or s3:// / gs:// (the report is staged locally, then uploaded)."""
    t0 = time.perf_counter()
    out = cfg.output_dir if is_remote(cfg.output_dir) else str(Path(cfg.output_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="interp-ray-report-") as staging:
        local = Path(staging) if is_remote(out) else Path(out)
        local.mkdir(parents=True, exist_ok=True)
        classifiers = train_classifiers(cfg, out)
        report = write_report(local, classifiers, time.perf_counter() - t0)
        if is_remote(out):
            upload_dir(local, out)
            return join_uri(out, report.name)
    return str(report)


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny budgets (tests, a quick look)")
    args = p.parse_args(argv)
    cfg = load_config(PipelineConfig, args.config, args.overrides)
    if args.smoke:
        cfg = apply_smoke(cfg)
    init_ray(args.address)
    report = run(cfg)
    print(f"[pipeline] report: {report}")
    return 0


if __name__ == "__main__":
    exit_with(main)
