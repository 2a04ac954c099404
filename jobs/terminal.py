"""The driver's terminal: the job's own lines and progress there, Ray's chatter in the Ray session's log files.

What Ray prints by default, in a job of the project's size (benchmarks/terminal_lines.py counts it; README
"What the terminal shows"): every Ray Data execution's "Starting execution … / Execution plan … / execution
finished" lines and, off a terminal, its logged progress table, from the driver and from every Ray Train worker and
``SplitCoordinator`` (each training epoch re-executes the stores' reads); Ray core's INFO/WARNING records
("Started a local Ray instance", the token notice); the E lines the C++ core worker of Train's controller writes
("PreemptionWatcher … max_restarts"), forwarded to the driver with every other line a worker prints.

``quiet_ray`` keeps all of that in the logs:

- ``ray.init(log_to_driver=False)`` (``ray_init_options``): workers' and actors' output stays in their files,
  ``<session>/logs/worker-*.out|err``. What the job needs from them reaches the driver otherwise: a task's or
  actor's error is raised in the driver with its traceback, Ray Train's epochs and worker failures come through the
  job's callback (``jobs.train_loop``);
- the driver's Ray Data logger keeps WARNING and above on the console (its DEBUG-level file,
  ``<session>/logs/ray-data/ray-data.log``, keeps everything, the execution lines and, off a terminal, Ray Data's
  progress table included); on a terminal Ray Data's own bars are off (the job draws its own:
  ``interp_ray.progress``);
- the driver's Ray core logger keeps ERROR and above on the console; its other records go to
  ``<session>/logs/interp-ray-driver.log`` (``DRIVER_LOG``);
- Ray's DeprecationWarnings about its own internal calls (not the job's) are not shown.

``INTERP_RAY_RAY_LOGS=1`` (or a job's ``--ray-logs``) leaves Ray as it is, for debugging Ray itself.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

ENV_RAY_LOGS = "INTERP_RAY_RAY_LOGS"
DRIVER_LOG = "interp-ray-driver.log"   # beside Ray's own logs in <session>/logs/
CORE_CONSOLE_LEVEL = logging.ERROR
DATA_CONSOLE_LEVEL = logging.WARNING


def ray_logs_on() -> bool:
    return os.environ.get(ENV_RAY_LOGS, "").strip().lower() in ("1", "true", "yes", "on")


def set_ray_logs(on: bool) -> None:
    """``--ray-logs``: Ray's output as Ray prints it, for this process and the jobs it runs in-process."""
    if on:
        os.environ[ENV_RAY_LOGS] = "1"


def ray_init_options() -> dict[str, Any]:
    """What ``ray.init`` takes so that workers' output stays in the session's log files."""
    return {} if ray_logs_on() else {"log_to_driver": False}


class AtLeast(logging.Filter):
    """Lets through records at ``level`` or above: on a console handler, the rest stays in the files."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        # Only Ray's own records are held back: a handler can be shared (Ray may hand the root's handlers to its
        # loggers, and then the filter sits on the root's console or pytest's capture handler too), and our warnings,
        # such as an unreadable image's one line, must reach the terminal whatever Ray did.
        return record.levelno >= self.level or not _from_ray(record)


def _from_ray(record: logging.LogRecord) -> bool:
    return record.name == "ray" or record.name.startswith("ray.")


class DropAdvice(logging.Filter):
    """Drops Ray Data's advice to turn its progress bars back on (``quiet_ray`` turned them off on purpose; the
    record stays in ray-data.log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def session_log_dir() -> str | None:
    """``<session>/logs`` of the Ray this process is connected to (None before ``ray.init``)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)   # what Ray Data's own file handler reads
    return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None


class SessionLogHandler(logging.Handler):
    """Appends records to ``<session>/logs/<filename>``. The session exists only once ``ray.init`` has started it,
    and Ray logs during ``ray.init``: records before that are held, then written first."""

    def __init__(self, filename: str = DRIVER_LOG):
        super().__init__(logging.DEBUG)
        self.filename = filename
        self.file: logging.FileHandler | None = None
        self.held: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- "
                                            "%(message)s"))

    @property
    def path(self) -> str | None:
        return self.file.baseFilename if self.file is not None else None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            directory = session_log_dir()
            if directory is None:
                self.held = (self.held + [record])[-1000:]
                return
            os.makedirs(directory, exist_ok=True)
            self.file = logging.FileHandler(os.path.join(directory, self.filename))
            self.file.setFormatter(self.formatter)
            for held in self.held:
                self.file.emit(held)
            self.held = []
        self.file.emit(record)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


def _quiet_console(logger: logging.Logger, level: int, *, console_name: str | None = None) -> None:
    for handler in logger.handlers:
        if isinstance(handler, (logging.FileHandler, SessionLogHandler)) or type(handler).__name__ == \
                "SessionFileHandler":
            continue
        if console_name is not None and handler.name != console_name:
            continue
        if not any(isinstance(f, AtLeast) for f in handler.filters):
            handler.addFilter(AtLeast(level))


def driver_log_handler() -> SessionLogHandler | None:
    """The handler ``quiet_ray`` put on the ``ray`` logger (None if it did not)."""
    return next((h for h in logging.getLogger("ray").handlers if isinstance(h, SessionLogHandler)), None)


def quiet_ray() -> None:
    """Keep Ray's chatter off this driver's terminal (the module docstring says where it goes). Idempotent; call it
    after ``import ray`` and before ``ray.init`` (Ray logs while it starts), also when Ray is already running."""
    if ray_logs_on():
        return
    import ray  # noqa: F401  (sets up the "ray" logger's console handler, which is then quieted)
    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    core = logging.getLogger("ray")
    _quiet_console(core, CORE_CONSOLE_LEVEL)
    if driver_log_handler() is None:
        core.addHandler(SessionLogHandler())
    data = logging.getLogger("ray.data")
    _quiet_console(data, DATA_CONSOLE_LEVEL, console_name="console")
    for handler in data.handlers:
        if handler.name == "console" and not any(isinstance(f, DropAdvice) for f in handler.filters):
            handler.addFilter(DropAdvice())
    # On a terminal Ray Data draws bars of its own, which would fight the job's; off one it logs a progress table
    # (INFO: to ray-data.log only, where it helps with a slow pipeline).
    if any(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr)):
        ray.data.DataContext.get_current().enable_progress_bars = False
    # Raised inside Ray by Ray's own calls (e.g. ExecutionOptions.exclude_resources in Ray Train's ingest): nothing
    # the job or its user can change.
    warnings.filterwarnings("ignore", category=RayDeprecationWarning, module=r"ray\.")
