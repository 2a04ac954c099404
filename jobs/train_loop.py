"""The Ray Train plumbing the training jobs share: a worker's resume from the run's last checkpoint, the drilled
failure, the per-epoch report with its checkpoint, and on the driver the TorchTrainer and the finished run.

Each job keeps what is its own: the model, the epoch, what its checkpoint's model directory holds and how the result
is exported. Every Ray Train checkpoint of these jobs holds ``STATE_FILE`` (what a worker needs to go on),
``HISTORY_FILE`` (one row per epoch, the record that survives restarts) and the job's model directory.
Ray is imported inside the functions that need it: the CLI and the tests import the jobs without starting it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from interp_ray.checkpoint import atomic_write_dir, is_remote, upload_dir
from interp_ray.config import RunSection, ScalingSection
from interp_ray.progress import Progress as Bar
from interp_ray.storage import check_storage, join, ray_storage

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"

Row = dict[str, Any]


class InjectedFailure(RuntimeError):
    """Raised once by ``train.fail_at_epoch`` to drill fault tolerance."""


# --- the worker ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resume:
    """Where a worker starts: from scratch, or after the epoch its run's last checkpoint saved."""

    state: dict[str, Any] | None   # that checkpoint's STATE_FILE; None on a fresh start
    history: list[Row]
    start_epoch: int
    attempt: int                   # 0, then one more for each restore: the history shows which epochs were redone

    @property
    def restored(self) -> bool:
        return self.state is not None


def read_resume(directory: Path | None) -> Resume:
    """The starting point a checkpoint directory gives (``None``: no checkpoint, a fresh start)."""
    if directory is None:
        return Resume(None, [], 0, 0)
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    history = read_history(directory)
    return Resume(state, history, state["epoch"] + 1, 1 + max((h["attempt"] for h in history), default=-1))


def read_history(directory: Path) -> list[Row]:
    return json.loads((Path(directory) / HISTORY_FILE).read_text())


def resume() -> Resume:
    """This worker's starting point: Ray Train hands back the run's last checkpoint after a failure or a rerun."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return read_resume(None)
    with ckpt.as_directory() as d:
        return read_resume(Path(d))


class BelowLevelFromRayTrain(logging.Filter):
    """Drops Ray Train's records under ``level`` (by the file that logged them: some of its loggers are named by
    path, not ``ray.train.*``, so Ray Train's own LoggingConfig does not reach them), lets everything else through."""

    def __init__(self, level: str):
        super().__init__()
        self.level = logging.getLevelName(level)

    def filter(self, record: logging.LogRecord) -> bool:
        inside = f"{os.sep}ray{os.sep}train{os.sep}"
        from_train = (record.name == "ray.train" or record.name.startswith("ray.train.") or inside in record.name
                      or inside in record.pathname)
        return not from_train or record.levelno >= self.level


def quiet_console(level: str) -> None:
    """On a Ray Train worker: Ray Train's records under ``level`` (e.g. its INFO "Reporting training result …" line,
    one per report per worker) leave the console, hence the driver's terminal, and stay in the worker's log files
    (Ray Train's session-file handlers are left as they are). ``run.log_level`` sets ``level``."""
    from ray.train.v2._internal.logging.logging import SessionFileHandler

    for handler in logging.getLogger().handlers:
        if not isinstance(handler, SessionFileHandler) and not any(
                isinstance(f, BelowLevelFromRayTrain) for f in handler.filters):
            handler.addFilter(BelowLevelFromRayTrain(level))


def rank_and_world() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def epochs(start: Resume, total: int, *, fail_at: int | None, rank: int) -> Iterator[int]:
    """The epochs left to train. Rank 0 raises ``InjectedFailure`` at the start of epoch ``fail_at``, never after a
    restore, so the drill fails once and the restored attempt finishes."""
    for epoch in range(start.start_epoch, total):
        if fail_at == epoch and not start.restored and rank == 0:
            raise InjectedFailure(f"injected failure at epoch {epoch}")
        yield epoch


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, epoch: int) -> dict[str, Any]:
    """The ``STATE_FILE`` of a job that trains one module with one optimiser and lr schedule."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch}


def load_training_state(start: Resume, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Put a ``training_state`` back after a restore; nothing on a fresh start."""
    if start.state is None:
        return
    model.load_state_dict(start.state["model"])
    optimizer.load_state_dict(start.state["optimizer"])
    scheduler.load_state_dict(start.state["scheduler"])


def start_worker(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, log_level: str
                 ) -> tuple[Resume, nn.Module, nn.Module, torch.device]:
    """A Ray Train worker's start for a job that trains one module: quiet the console, put the run's last checkpoint
    back into model, optimiser and schedule (nothing on a fresh start), then wrap the model for DDP. Returns the
    resume point, the wrapped model, the bare one (its ``module``) and the worker's device."""
    import ray.train.torch

    quiet_console(log_level)
    start = resume()
    load_training_state(start, model, optimizer, scheduler)
    device = ray.train.torch.get_device()
    wrapped = ray.train.torch.prepare_model(model)
    return start, wrapped, getattr(wrapped, "module", wrapped), device


def write_checkpoint(directory: Path, state: dict[str, Any], history: list[Row],
                     save_model: Callable[[Path], None]) -> None:
    """Fill ``directory`` as one checkpoint; ``save_model(directory)`` writes the job's model directory in it."""
    torch.save(state, Path(directory) / STATE_FILE)
    (Path(directory) / HISTORY_FILE).write_text(json.dumps(history))
    save_model(Path(directory))


def report_epoch(row: Row, history: list[Row], *, checkpoint: bool, state: Callable[[], dict[str, Any]],
                 save_model: Callable[[Path], None]) -> None:
    """Every rank reports ``row``; with ``checkpoint`` (rank 0, when one is due) the report carries a checkpoint.
    ``state`` is a callable so that epochs without a checkpoint skip copying the weights."""
    import ray.train

    if not checkpoint:
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as d:
        write_checkpoint(Path(d), state(), history, save_model)
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))


@contextlib.contextmanager
def weights_swapped(module: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """``module`` holds ``state`` inside the block (to export the best epoch so far) and its own weights after it,
    so training goes on from the current epoch."""
    current = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    try:
        yield module
    finally:
        module.load_state_dict(current)


# --- the driver ------------------------------------------------------------------------------------------------------

def resolve_use_gpu(setting: bool | Literal["auto"]) -> bool:
    """``scaling.use_gpu``; "auto" means the cluster has a GPU. The workers train, not this driver: a CPU-only head
    node with GPU workers (the usual cloud layout) must still train on the GPUs."""
    if setting != "auto":
        return bool(setting)
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def storage_root(run: RunSection) -> str:
    """``run.storage_path`` as the workers must see it: absolute when local, since they may run elsewhere."""
    return run.storage_path if is_remote(run.storage_path) else str(Path(run.storage_path).resolve())


def run_path(run: RunSection, *parts: str) -> str:
    """A path below ``run.storage_path`` (the run's own files beside Ray's, e.g. ``<name>/<init dir>``)."""
    root = storage_root(run)
    return join(root, *parts) if is_remote(root) else str(Path(root).joinpath(*parts))


# The figures an epoch's progress line shows, where a job's metrics row has them.
PROGRESS_KEYS = ("phase", "train_loss", "loss", "val_loss", "val_accuracy", "val_accuracy_f", "val_fidelity",
                 "val_nll")


def progress_line(name: str, row: dict[str, Any]) -> str:
    """One line for a finished epoch, counted from 1: "[train] digits-…: epoch 3 (6 s): train_loss 0.21, …"."""
    shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
             if k in PROGRESS_KEYS and isinstance(v, (int, float, str))]
    took = f" ({row['epoch_s']:.0f} s)" if isinstance(row.get("epoch_s"), (int, float)) else ""
    epoch = row.get("epoch")
    number = epoch + 1 if isinstance(epoch, int) else "?"
    return f"[train] {name}: epoch {number}{took}" + (": " + ", ".join(shown) if shown else "")


def progress_note(row: dict[str, Any]) -> str:
    """The figures of ``progress_line`` alone: the epoch bar's note."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                     if k in PROGRESS_KEYS and isinstance(v, (int, float, str)))


def epoch_progress(feed: Any):
    """A Ray Train callback that runs in Train's controller and puts each reported epoch (rank 0's row, the figures
    ``progress_line`` shows) and each worker failure on ``feed``, a ``ray.util.queue.Queue`` the driver reads
    (``EpochFeed``). The driver draws the bar: the controller's own output stays in its log file
    (``jobs.terminal``)."""
    from ray.train import UserCallback

    keys = {"epoch", "epoch_s", *PROGRESS_KEYS}

    class EpochProgress(UserCallback):
        def __init__(self):
            self.lost = False

        def _put(self, item: dict[str, Any]) -> None:
            # Progress must never fail a run: an exception in a callback ends Train's controller, so a queue that is
            # gone (its node lost, the driver gone) only stops the progress, and the run goes on.
            if self.lost:
                return
            try:
                feed.put(item, timeout=5)
            except Exception:
                self.lost = True

        def after_report(self, run_context, metrics, checkpoint):
            if metrics:
                self._put({"row": {k: v for k, v in metrics[0].items() if k in keys}})

        def after_exception(self, run_context, worker_exceptions):
            self._put({"failed": {int(rank): f"{type(e).__name__}: {e}" for rank, e in worker_exceptions.items()}})

    return EpochProgress()


class EpochFeed:
    """The driver's side of ``epoch_progress``: a queue actor (no CPU reserved) and, while ``fit()`` runs, a thread
    moving what arrives onto the epoch bar (``interp_ray.progress``). A worker's failure is printed whatever the
    progress mode (``--quiet`` included): Ray Train may retry it silently otherwise."""

    def __init__(self, name: str, epochs: int, max_failures: int):
        from ray.util.queue import Queue

        self.name, self.epochs, self.max_failures = name, epochs, max_failures
        # On the driver's own node (no CPU reserved): a worker node that is lost mid-run (Ray Train restarts from a
        # checkpoint) must not take the driver's progress feed with it.
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.failures = 0

    def handle(self, item: dict[str, Any], bar: Bar) -> None:
        if "row" in item:
            row = item["row"]
            epoch = row.get("epoch")
            done = epoch + 1 if isinstance(epoch, int) else bar.done + 1
            if bar.mode == "bar":
                bar.write(progress_line(self.name, row))   # each epoch's figures stay above the bar
            bar.update_to(done, note=progress_note(row), force=True)
        for rank, error in item.get("failed", {}).items():
            self.failures += 1
            retry = (f"Ray Train restarts the workers from the last checkpoint (failure {self.failures} of "
                     f"run.max_failures={self.max_failures})" if self.failures <= self.max_failures
                     else "no retries left")
            line = error.strip().splitlines()[-1] if error.strip() else error
            print(f"[train] {self.name}: worker rank {rank} failed: {line}; {retry}", file=sys.stderr, flush=True)

    def follow(self, bar: Bar, stop: threading.Event) -> None:
        from ray.exceptions import RayError
        from ray.util.queue import Empty

        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except Empty:
                if stop.is_set():
                    return
                continue
            except RayError:   # the queue went with a Ray that is shutting down: fit()'s own error says why
                return
            self.handle(item, bar)

    def fit(self, trainer) -> Any:
        stop = threading.Event()
        with Bar(f"{self.name} epochs", self.epochs, "epochs") as bar:
            thread = threading.Thread(target=self.follow, args=(bar, stop), daemon=True, name="epoch-progress")
            thread.start()
            try:
                return trainer.fit()
            finally:
                stop.set()            # the thread drains what is queued, then ends
                thread.join(timeout=10)
                self.shutdown()

    def shutdown(self) -> None:
        import ray

        try:
            ray.kill(self.queue.actor)
        except Exception:  # already gone with its job
            pass


class ProgressTrainer:
    """A TorchTrainer whose ``fit()`` shows the epochs the workers report (``EpochFeed``)."""

    def __init__(self, trainer, feed: EpochFeed):
        self.trainer, self.feed = trainer, feed

    def fit(self):
        return self.feed.fit(self.trainer)


def make_trainer(train_func: Callable[[dict[str, Any]], dict[str, Any]], loop_config: dict[str, Any], *, name: str,
                 scaling: ScalingSection, run: RunSection, use_gpu: bool, epochs: int,
                 datasets: dict[str, Any] | None = None, dataset_config: Any = None) -> ProgressTrainer:
    """The TorchTrainer of a job, whose ``fit()`` draws a bar of its ``epochs`` as the workers report them.
    ``datasets`` (Ray Datasets, e.g. ``ActivationStore.to_ray()``) reach the workers through
    ``ray.train.get_dataset_shard``; ``dataset_config`` says which are split between them."""
    import ray.train
    from ray.train.torch import TorchTrainer

    # A bucket that is missing or refuses us fails here in one line, not inside Ray Train's controller.
    check_storage(run.storage_path, what="run.storage_path")
    storage_path, storage_fs = ray_storage(storage_root(run))
    feed = EpochFeed(name, epochs, run.max_failures)
    return ProgressTrainer(TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=dict(scaling.resources_per_worker)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            # the controller's ray.train.* records; the workers' console is filtered by quiet_console
            logging_config=ray.train.LoggingConfig(log_level=run.log_level),
            callbacks=[epoch_progress(feed.queue)],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.checkpoints_to_keep)),
        **({"datasets": datasets} if datasets else {}),
        **({"dataset_config": dataset_config} if dataset_config is not None else {}),
    ), feed)


@contextlib.contextmanager
def final_checkpoint(result) -> Iterator[tuple[Path, list[Row]]]:
    """The finished run's last checkpoint as a local directory, with its history."""
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        yield Path(d), read_history(Path(d))


def worker_history(result) -> list[Row]:
    """Rank 0's own history (its return value): beside the checkpoint's rows it holds what a job measured after
    each report."""
    return (getattr(result, "return_value", None) or {}).get("history", [])


def export_dir(src: Path, output: str, *, upload: Callable[[Path, str], None] = upload_dir) -> None:
    """Copy a checkpoint's model directory to ``output``: locally in one rename, so a reader never sees half of it;
    ``upload`` when ``output`` is remote."""
    if is_remote(output):
        upload(src, output)
    else:
        atomic_write_dir(Path(output), lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
