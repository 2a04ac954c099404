"""What a job leaves on its terminal (jobs/terminal.py, interp_ray/progress.py): its own progress lines off a TTY,
nothing with --quiet, no Ray Data execution chatter (kept in Ray's log files), and a worker's error still shown."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from interp_ray.progress import ENV as PROGRESS_ENV
from jobs.common import base_parser
from jobs.extract_activations import main as extract_main
from jobs.terminal import ENV_RAY_LOGS, AtLeast, ray_init_options

REPO = Path(__file__).resolve().parents[2]
CHATTER = ("Starting execution", "Execution plan")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.delenv(ENV_RAY_LOGS, raising=False)


def extract_args(checkpoint, root, *more):
    return ["--config", "configs/extract_digits.yaml", "--set", f"checkpoint={checkpoint}", "--set", "splits=[train]",
            "--set", "layers=[relu3]", "--set", f"store.root={root}", "--set", "store.shard_rows=256", *more]


def test_quiet_and_ray_logs_flags_set_their_environment_variables(monkeypatch):
    args = base_parser("x").parse_args([])
    assert (args.quiet, args.ray_logs) == (False, False) and PROGRESS_ENV not in os.environ
    assert ray_init_options() == {"log_to_driver": False}
    args = base_parser("x").parse_args(["--quiet", "--ray-logs"])
    assert args.quiet and args.ray_logs
    assert os.environ[PROGRESS_ENV] == "off" and ray_init_options() == {}   # Ray's own forwarding, as Ray does it


def test_extraction_prints_progress_lines_off_a_terminal_and_nothing_with_quiet(digits_checkpoint, tmp_path,
                                                                               capsys):
    assert extract_main(extract_args(digits_checkpoint, tmp_path / "a", "--set", "compute.engine=local")) == 0
    err = capsys.readouterr().err
    shown = [ln for ln in err.splitlines() if ln.startswith("[progress] train rows:")]
    # digits' 1,257 training rows in 5 parts: a line at the first rows, then one per part (progress_every: 1)
    assert len(shown) == 6 and [ln.split("; ")[1][:3] for ln in shown] == ["0/5", "1/5", "2/5", "3/5", "4/5", "5/5"]
    assert shown[-1].startswith("[progress] train rows: 1257/1257 rows (100%), ") and "rows/s, done; 5/5 parts" \
        in shown[-1]
    assert "eta " in shown[1] and "rows/s" in shown[1]
    assert extract_main(extract_args(digits_checkpoint, tmp_path / "b", "--set", "compute.engine=local",
                                     "--quiet")) == 0
    assert "[progress]" not in capsys.readouterr().err


def test_at_least_holds_back_only_rays_records_below_its_level():
    keep = AtLeast(logging.ERROR)
    assert [keep.filter(logging.LogRecord(name, lvl, "f", 1, "m", None, None))
            for name in ("ray", "ray.data._internal") for lvl in (logging.INFO, logging.WARNING, logging.ERROR)
            ] == [False, False, True] * 2
    # ours pass whatever handler the filter ended up on (the root's console, pytest's capture): an unreadable
    # image's warning line reached no terminal when it did not
    assert all(keep.filter(logging.LogRecord(name, logging.WARNING, "f", 1, "m", None, None))
               for name in ("interp_ray.data", "jobs.extract_activations", "rayish"))


def ray_data_log(session_logs: Path) -> str:
    path = session_logs / "ray-data" / "ray-data.log"
    return path.read_text() if path.exists() else ""


@pytest.mark.ray
def test_a_ray_job_off_a_terminal_shows_a_workers_error_and_its_progress_but_no_ray_data_chatter(
        ray_local, digits_checkpoint, tmp_path):
    """The job as a user runs it with its output piped (a log file, ``ray job submit``), a driver of its own on the
    session's cluster: first its writer actor fails after 2 of 5 parts (the drill), then the rerun finishes."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    before = ray_data_log(logs).count("Starting execution of Dataset")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

    def run(*more: str) -> tuple[int, str]:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.extract_activations", "--address", ray.get_runtime_context().gcs_address,
             *extract_args(digits_checkpoint, tmp_path / "acts", "--set", "compute.load_num_cpus=0.5",
                           "--set", "compute.write_num_cpus=0.5", *more)],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
        return proc.returncode, proc.stdout + proc.stderr

    code, failed = run("--set", "fail_after_shards=2")
    # the worker's error reaches the terminal (raised in the driver with the actor's traceback); the writer counts
    # its own parts, and a retried write task may land one more before the drill fires (2 or 3 of 5, by timing)
    found = re.search(r"injected failure after writing (\d+) shard\(s\)", failed)
    assert code != 0 and found and int(found.group(1)) >= 2, failed
    code, resumed = run()
    assert code == 0, resumed
    # the job's own progress: the rerun's missing parts, a line for each (progress_every: 1)
    missing = 5 - int(found.group(1))
    shown = [ln for ln in resumed.splitlines() if ln.startswith("[progress] train rows: ")]
    last = rf"\[progress\] train rows: (\d+)/\1 rows \(100%\), .*; {missing}/{missing} parts written"
    assert shown and re.match(last, shown[-1]), resumed
    for terminal in (failed, resumed):
        # Ray Data's execution lines are in the session's Ray Data log, not on the terminal
        assert not [ln for ln in terminal.splitlines() if any(c in ln for c in CHATTER)], terminal
        # Ray core's INFO records of this driver ("Connecting to existing Ray cluster …") go to its log file
        assert "Connecting to existing Ray cluster" not in terminal, terminal
    assert ray_data_log(logs).count("Starting execution of Dataset") >= before + 2
    assert "Connecting to existing Ray cluster" in (logs / "interp-ray-driver.log").read_text()
