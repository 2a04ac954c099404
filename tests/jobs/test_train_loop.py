"""The Ray-free parts of jobs.train_loop: the checkpoint layout, resume, the drilled failure, the driver helpers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from interp_ray.config import RunSection
from jobs.train_loop import (HISTORY_FILE, STATE_FILE, InjectedFailure, Resume, epochs, export_dir, final_checkpoint,
                             load_training_state, read_resume, resolve_use_gpu, run_path, storage_root,
                             training_state, weights_swapped, worker_history, write_checkpoint)


def _fit():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _save_marker(d: Path) -> None:
    (d / "model").mkdir()
    (d / "model" / "weights.txt").write_text("w")


def test_fresh_start():
    start = read_resume(None)
    assert (start.state, start.history, start.start_epoch, start.attempt, start.restored) == (None, [], 0, 0, False)


def test_checkpoint_round_trip_resumes_after_its_epoch_with_the_next_attempt(tmp_path):
    model, opt, sched = _fit()
    history = [{"epoch": 0, "attempt": 0}, {"epoch": 1, "attempt": 1}]
    write_checkpoint(tmp_path, training_state(model, opt, sched, 1), history, _save_marker)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([STATE_FILE, HISTORY_FILE, "model"])

    start = read_resume(tmp_path)
    assert start.restored and start.start_epoch == 2 and start.attempt == 2 and start.history == history
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_opt, T_max=4)
    load_training_state(start, fresh, fresh_opt, fresh_sched)
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_sched.last_epoch == sched.last_epoch
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_load_training_state_leaves_a_fresh_start_alone():
    model, opt, sched = _fit()
    before = model.weight.detach().clone()
    load_training_state(read_resume(None), model, opt, sched)
    assert torch.equal(model.weight, before)


def test_injected_failure_only_on_rank_0_and_never_after_a_restore():
    fresh = Resume(None, [], 0, 0)
    it = epochs(fresh, 4, fail_at=2, rank=0)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(InjectedFailure, match="epoch 2"):
        next(it)
    assert list(epochs(fresh, 4, fail_at=2, rank=1)) == [0, 1, 2, 3]
    assert list(epochs(Resume({"epoch": 1}, [], 2, 1), 4, fail_at=2, rank=0)) == [2, 3]
    assert list(epochs(fresh, 3, fail_at=None, rank=0)) == [0, 1, 2]


def test_weights_swapped_exports_the_given_weights_and_restores_the_current_ones():
    module = torch.nn.Linear(2, 2)
    current = {k: v.clone() for k, v in module.state_dict().items()}
    best = {k: torch.zeros_like(v) for k, v in current.items()}
    with weights_swapped(module, best):
        assert torch.equal(module.weight, best["weight"])
    assert torch.equal(module.weight, current["weight"])


def test_paths_below_the_storage_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_root(RunSection(storage_path="runs")) == str(tmp_path / "runs")
    assert run_path(RunSection(storage_path="runs"), "r1", "init") == str(tmp_path / "runs" / "r1" / "init")
    assert storage_root(RunSection(storage_path="s3://b/runs/")) == "s3://b/runs/"
    assert run_path(RunSection(storage_path="s3://b/runs/"), "r1", "init") == "s3://b/runs/r1/init"


def test_explicit_use_gpu_needs_no_cluster():
    assert resolve_use_gpu(False) is False
    assert resolve_use_gpu(True) is True


def test_export_dir_replaces_a_local_output_and_uploads_a_remote_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_dir(src, str(out))
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]

    uploads = []
    export_dir(src, "s3://bucket/out", upload=lambda s, uri: uploads.append((s, uri)))
    assert uploads == [(src, "s3://bucket/out")]


def test_final_checkpoint_and_worker_history(tmp_path):
    with pytest.raises(RuntimeError, match="without a checkpoint"):
        with final_checkpoint(SimpleNamespace(checkpoint=None)):
            pass
    (tmp_path / HISTORY_FILE).write_text('[{"epoch": 0}]')

    class Checkpoint:
        def as_directory(self):
            from contextlib import nullcontext

            return nullcontext(str(tmp_path))

    with final_checkpoint(SimpleNamespace(checkpoint=Checkpoint())) as (d, history):
        assert d == tmp_path and history == [{"epoch": 0}]
    assert worker_history(SimpleNamespace(return_value={"history": [1]})) == [1]
    assert worker_history(SimpleNamespace()) == []


def test_quiet_console_drops_ray_trains_info_lines_from_the_console_only(tmp_path):
    """Ray Train's per-report INFO line comes from a logger named by its file path; on the console it is dropped
    under the run's log level, while Ray Train's session-file handler and every other logger's records are kept."""
    import logging

    import ray.train.v2._internal.execution.context as train_context
    from ray.train.v2._internal.logging.logging import SessionFileHandler

    from jobs.train_loop import quiet_console

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    class FileKeep(SessionFileHandler, Keep):
        def __init__(self):
            Keep.__init__(self)

        emit = Keep.emit

    root = logging.getLogger()
    console, files = Keep(), FileKeep()
    root.addHandler(console)
    root.addHandler(files)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        quiet_console("WARNING")
        quiet_console("WARNING")  # idempotent: one filter per handler
        assert len(console.filters) == 1 and not files.filters
        train_logger = train_context.logger          # named by path, not ray.train.*
        train_logger.info("Reporting training result 1")
        train_logger.warning("a Ray Train warning")
        logging.getLogger("interp_ray.job").info("epoch 0 done")
        assert console.records == ["a Ray Train warning", "epoch 0 done"]
        assert files.records == ["Reporting training result 1", "a Ray Train warning", "epoch 0 done"]
    finally:
        root.removeHandler(console)
        root.removeHandler(files)
        root.setLevel(old_level)


def test_run_log_level_is_checked():
    assert RunSection().log_level == "WARNING"
    with pytest.raises(ValueError):
        RunSection(log_level="LOUD")


def test_progress_line_shows_the_epoch_from_1_and_its_figures_only():
    from jobs.train_loop import progress_line

    row = {"epoch": 2, "attempt": 0, "phase": "explainer", "train_loss": 0.21234, "val_accuracy": 0.95,
           "epoch_s": 6.4, "samples_per_rank": [10, 10], "peak_rss_mib_per_rank": [900.0]}
    assert progress_line("digits-1", row) == ("[train] digits-1: epoch 3 (6 s): phase explainer, train_loss 0.2123, "
                                              "val_accuracy 0.95")
    assert progress_line("x", {}) == "[train] x: epoch ?"
