"""The main job: classifiers, activations, every explainer, their evaluations, and one Markdown report.

    python -m jobs.pipeline [--config configs/pipeline.yaml] [--smoke] [--only classifiers,ENTRY,…] [--fresh]

``engine`` holds what every stage shares (the config, the stage registry, resuming finished stages, the report and
the claims table); ``stages/`` holds one module per stage, each with its run body and its report section, found by
a package scan. The engine's public names are re-exported here for the code and tests that import them.
"""

# The registry itself (engine.PIPELINE_STAGES) is not re-exported: a name bound here would go stale when a test
# swaps the engine's dict; load_stages() returns the live one.
from jobs.pipeline.engine import (Context, JobRef, PipelineConfig, Stage, StageRef, check, load_stages, main,
                                  pipeline_stage, plural, progress, rel_path, reports, run, run_stages, selected_stages,
                                  stage_names, stage_seconds, write_report)

__all__ = ["Context", "JobRef", "PipelineConfig", "Stage", "StageRef", "check", "load_stages", "main",
           "pipeline_stage", "plural", "progress", "rel_path", "reports", "run", "run_stages", "selected_stages",
           "stage_names", "stage_seconds", "write_report"]
