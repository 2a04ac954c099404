"""Shared fixtures. One local Ray cluster per test session, bound to 127.0.0.1, stopped at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from machine_lock import MACHINE_LOCK
from ray_head import free_ports
from torch_settings import torch_threads

# Ray reads these when first imported: a local cluster binds loopback only (no traffic leaves the machine).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Train V2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default) and each run takes
# several polls to start, report and finish: a one-report, two-worker fit took 12.9 s at 2 s and 7.6-8.1 s at
# 0.2-0.25 s (3 fits each, this 2-core machine). The suite runs dozens of short fits, so it polls faster; the variable
# reaches every Ray it starts (ray_head and the multinode raylets inherit os.environ) and the driver passes it on to
# the controller. A user's hour-long run keeps Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

# Logical CPUs for the test cluster: Train V2's controller takes one, two train workers take two more.
TEST_RAY_CPUS = 4


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """Start the session's local Ray once. Sessions on the same machine queue on a lock (tests/machine_lock.py) so
    their ports never clash; the session holds it until its end."""
    import ray

    with MACHINE_LOCK:
        try:
            # A dashboard of its own, on a free port: Ray Train V2's placement-group cleaner polls the State API
            # (which lives in the dashboard) to see whether the run's controller is alive. Without one, its queries
            # went to the default 127.0.0.1:8265, and when another Ray's dashboard answered there (a job run by hand
            # beside the suite) it reported the controller unknown, hence dead, and removed a running test's
            # placement group.
            ray.init(num_cpus=TEST_RAY_CPUS, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=free_ports(1)[0], object_store_memory=1_000_000_000, log_to_driver=False)
            yield ray
        finally:
            ray.shutdown()


def pytest_addoption(parser):
    # Robustness checks of tests that train a model and assert a figure: the figure must hold for any seed and
    # thread count, so the suite can be rerun with --fixture-seed 1, 2 and --torch-threads 2 (issue 14).
    parser.addoption("--fixture-seed", type=int, default=0,
                     help="offset added to the seed of every trained test fixture (default 0: the shipped seeds)")
    parser.addoption("--torch-threads", type=int, default=1,
                     help="torch intra-op threads while trained fixtures train and their tests run (default 1)")


@pytest.fixture(scope="session")
def fixture_seed(request) -> int:
    """Added to the seeds of the fixtures that train a model (0 in CI)."""
    return request.config.getoption("--fixture-seed")


@pytest.fixture(scope="session")
def test_torch_threads(request) -> int:
    return request.config.getoption("--torch-threads")


@pytest.fixture(scope="module")
def pinned_torch_threads(test_torch_threads):
    """The test thread count (1 unless --torch-threads says otherwise) for a module, restored after it: small models
    on a shared 2-core box gain nothing from more intra-op threads and lose a lot to contention (30× slower seen),
    and a module must not leave its setting behind for the next one."""
    with torch_threads(test_torch_threads):
        yield


@pytest.fixture(scope="module")
def ray_worker_torch_threads():
    """One torch thread for a module whose tests compare in-process results with Ray workers' (Ray sets a worker's
    OMP_NUM_THREADS to its CPU count, 1 in these tests): float32 sums, and so the last bits, depend on the count."""
    with torch_threads(1):
        yield


@pytest.fixture
def machine_lock():
    """The machine-wide test lock, for a test whose own subprocesses start Ray clusters: taken for the test, unless
    this session holds it already (its ``ray_session``, started by an earlier test), whose hold then covers it."""
    with MACHINE_LOCK:
        yield


@pytest.fixture
def ray_local(ray_session):
    """Use in tests marked ``ray``: the session's cluster."""
    return ray_session


@pytest.fixture
def digits_checkpoint(tmp_path_factory):
    """A small untrained digits CNN checkpoint (random weights are enough for equality and plumbing tests)."""
    import torch

    from interp_ray.checkpoint import save_classifier
    from interp_ray.models import build_model

    torch.manual_seed(0)
    opts = {"num_classes": 10, "in_channels": 1, "image_size": 8}
    model = build_model("digits_cnn", **opts)
    path = tmp_path_factory.mktemp("ckpt") / "digits_cnn"
    save_classifier(path, model, model_name="digits_cnn", model_options=opts,
                    class_names=[str(i) for i in range(10)], data={"name": "digits"})
    return path


@pytest.fixture(scope="session")
def random_scenes_checkpoint(tmp_path_factory):
    """``make(seed=, image_size=)`` → the path of a new tiny untrained scenes CNN checkpoint (random weights suffice for
    equality and plumbing). Its 12 classes are named by index, as the dataset-vs-model class check takes any dataset's
    names to be when the model's are indices."""
    def make(*, seed: int, image_size: int = 32) -> Path:
        from interp_ray.testing.specimens import SCENES_OPTS, save_random_classifier

        path = tmp_path_factory.mktemp("ckpt") / "scenes_cnn"
        save_random_classifier(path, "scenes_cnn", {**SCENES_OPTS, "image_size": image_size},
                               [str(i) for i in range(12)], None, seed=seed)
        return path

    return make


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free 127.0.0.1 port for the whole session (started only when a test asks)."""
    from moto_s3 import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def s3(s3_server, monkeypatch):
    """``(endpoint, bucket)``: a fresh bucket, with ``INTERP_RAY_S3_ENDPOINT`` and moto's credentials set."""
    import uuid

    from moto_s3 import CREDENTIALS, create_bucket

    bucket = f"t-{uuid.uuid4().hex[:12]}"
    create_bucket(s3_server, bucket)
    monkeypatch.setenv("INTERP_RAY_S3_ENDPOINT", s3_server)
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    return s3_server, bucket


@pytest.fixture(scope="session")
def smoke_main_job(tmp_path_factory, fixture_seed):
    """The smoke main job by `ray job submit`, once per session (tests/main_job.py): what it wrote and printed."""
    from main_job import submit_smoke_main_job

    return submit_smoke_main_job(tmp_path_factory.mktemp("main_job") / "repo", fixture_seed)


def pytest_collection_modifyitems(config, items):
    """The tests of the smoke main job (``smoke_main_job``) run first, in their own order, before anything else has
    started: on this 2-core machine the job took 245-269 s with the session's Ray idle beside it, but 332 s after
    tests/jobs and 365 s after the rest of the suite (what earlier tests leave running, each a few % of a core)."""
    items.sort(key=lambda item: "smoke_main_job" not in getattr(item, "fixturenames", ()))  # stable: order kept
