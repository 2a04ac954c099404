"""The main job's configuration: stage configs compose the jobs' own files, and mistakes fail before any work."""

import pytest

from interp_ray.config import ClassifierJobConfig
from jobs.common import run_main
from jobs.pipeline import JobRef, PipelineConfig, check, main, selected_stages, stage_seconds


def test_job_ref_layers_file_then_set_then_smoke_then_forced():
    ref = JobRef(config="configs/digits.yaml", set={"train.epochs": 7, "train.lr": 0.01},
                 smoke={"train.epochs": 2})
    full = ref.load(ClassifierJobConfig, smoke=False)
    assert (full.train.epochs, full.train.lr, full.train.batch_size) == (7, 0.01, 64)  # batch size from the file
    smoke = ref.load(ClassifierJobConfig, smoke=True, forced={"output": "/x/y"})
    assert (smoke.train.epochs, smoke.train.lr, smoke.output) == (2, 0.01, "/x/y")


def test_the_shipped_config_is_valid_in_both_sizes():
    from interp_ray.config import load_config

    cfg = load_config(PipelineConfig, "configs/pipeline.yaml")
    stages = selected_stages(cfg, None)
    assert stages == ["classifiers", "cnn_inte", "flint", "interpnet"]
    check(cfg, stages, smoke=False)
    check(cfg, stages, smoke=True)


@pytest.mark.parametrize("args, needle", [
    (["--only", "classifiers,nope"], "unknown stage 'nope'"),
    (["--set", "flint.set={train.epochs: -1}"], "train.epochs"),
    (["--set", "cnn_inte.classifier=cifar"], "cnn_inte.classifier: 'cifar'"),
    (["--set", "interpnet.config=configs/missing.yaml"], "configs/missing.yaml does not exist"),
    (["--only", "cnn_inte"], "need the classifiers stage"),
])
def test_mistakes_exit_2_with_one_line_before_ray_starts(args, needle, tmp_path, capsys):
    code = run_main(main, ["--config", "configs/pipeline.yaml", "--set", f"output_dir={tmp_path / 'out'}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_stage_seconds_sums_the_classifiers():
    assert stage_seconds({"seconds": 3.0}) == 3.0
    assert stage_seconds({"a": {"seconds": 1.0}, "b": {"seconds": 2.5}}) == 3.5
