"""Scenario 4: Ray's real autoscaler over its fake multi-node provider (scripts/local_cluster.py, ``autoscaler=``),
with node types that mirror cluster/aws.yaml: a CPU head and worker types a job or a replica brings up on demand —
a CPU type and a GPU type (one simulated ``GPU`` each), both ``min_workers: 0``.

A job that asks for GPU workers makes the autoscaler start GPU nodes, runs on them, and they go away after the idle
timeout; Serve autoscaling under load raises the Explainer's replicas above one (each wants a GPU: a node each) and
lowers them again once the load stops. The figures (scale-up and scale-down times) are printed.

Not in the CI selection (``-m "multinode and ci"``); run with the other scenarios::

    python -m pytest tests/multinode -m multinode -q -s

The simulated GPUs are resources only (no CUDA here): the extraction actors and Explainer replicas placed on them
run on the CPU (their device is "CUDA when the process sees one"). A Ray Train job could not be the GPU job here:
Ray Train picks the NCCL backend whenever a worker holds a GPU, and NCCL needs a real one.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from local_cluster import LocalCluster, _processes_under, free_ports, make_bucket
from moto_s3 import list_keys
from multinode_serve import Load, deploy, digits_png, explainer_replicas, running_on, save_digits_checkpoint, \
    shutdown, wait_for

pytestmark = [pytest.mark.multinode, pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
IDLE_TIMEOUT_MIN = 0.2   # 12 s: a node is removed this long after its last task or actor ended
# cluster/aws.yaml's worker types, one CPU each here (ray.worker.cpu: 8 CPUs there; ray.worker.gpu.spot: 4 CPUs and
# one GPU). The head is "ray.head.default", the fake provider's fixed name for the node it did not start.
NODE_TYPES = {
    "ray.worker.cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 1},
    "ray.worker.gpu.spot": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2},
}


@pytest.fixture(scope="module")
def autoscaling_cluster():
    with LocalCluster.started(head_cpus=1, autoscaler={"node_types": NODE_TYPES,
                                                       "idle_timeout_minutes": IDLE_TIMEOUT_MIN},
                              timeout=200) as c:
        yield c
        root, head = c.root, c.head.pid
    # The head's process group and every node the autoscaler started (they run under the cluster's temp dir).
    assert not _processes_under(root), "processes of the autoscaling cluster are left"
    assert head is None or not Path(f"/proc/{head}").exists() or "Z" in Path(f"/proc/{head}/stat").read_text()


@pytest.fixture
def digits_on_s3(autoscaling_cluster, monkeypatch) -> tuple[str, str]:
    """A fresh bucket on the cluster's S3 holding a digits checkpoint, and this process pointed at that S3:
    (bucket, checkpoint URI)."""
    c = autoscaling_cluster
    for k in ("INTERP_RAY_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(k, c.env[k])
    bucket = f"as-{uuid.uuid4().hex[:10]}"
    make_bucket(c.s3_endpoint, bucket)
    ckpt = f"s3://{bucket}/ckpt/digits"
    save_digits_checkpoint(ckpt)
    return bucket, ckpt


def gpu_nodes(c: LocalCluster) -> set[str]:
    return {n["node_id"] for n in c.alive_nodes() if n.get("resources_total", {}).get("GPU")}


def test_gpu_job_brings_up_gpu_nodes_that_go_away_when_idle(autoscaling_cluster, digits_on_s3):
    """Activation extraction with two extractor actors of one GPU each (``compute.num_gpus=1``,
    ``compute.wait_for_resources``) on a cluster that has no GPU: the autoscaler starts GPU nodes, the job finishes
    on them, and the nodes are removed after the idle timeout."""
    c = autoscaling_cluster
    bucket, ckpt = digits_on_s3
    assert not gpu_nodes(c)
    cmd = [sys.executable, "-m", "jobs.extract_activations", "--set", f"checkpoint={ckpt}", "--set", "splits=[train]",
           "--set", "layers=[relu3]", "--set", "store.shard_rows=128", "--set", "compute.batch_size=64",
           "--set", f"store.root=s3://{bucket}/acts", "--set", "compute.actors=2", "--set", "compute.num_gpus=1",
           "--set", "compute.num_cpus=0.5", "--set", "compute.wait_for_resources=true", "--address", c.address]
    log = open(Path(c.root) / "gpu_job.log", "w")
    t0 = time.time()
    driver = subprocess.Popen(cmd, env=c.driver_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    first_gpu_at, seen = None, set()
    try:
        deadline = time.monotonic() + 600
        while driver.poll() is None:
            assert time.monotonic() < deadline, "the GPU job did not finish within 10 min"
            now = gpu_nodes(c)
            if now and first_gpu_at is None:
                first_gpu_at = time.time()
            seen |= now
            time.sleep(1)
        ended = time.time()
    finally:
        if driver.poll() is None:
            import os
            os.killpg(driver.pid, 9)
            driver.wait(timeout=30)
        log.close()
    assert driver.returncode == 0, Path(log.name).read_text()[-4000:]
    parts = [k for k in list_keys(c.s3_endpoint, f"{bucket}/acts") if k.endswith(".parquet")]
    assert len(parts) == 10  # 1257 rows in parts of 128: the whole split, computed by actors that each held a GPU
    assert seen, "the job finished, but no GPU node was ever seen"
    gone_at = wait_for(lambda: not gpu_nodes(c), 300, lambda: f"GPU nodes still up: {gpu_nodes(c)}")
    print(f"\n[multinode] autoscaler, GPU job: first GPU node {first_gpu_at - t0:.1f} s after the job started "
          f"({len(seen)} GPU node(s) in all), job {ended - t0:.0f} s; no GPU node {gone_at - ended:.1f} s after it "
          f"ended (idle timeout {IDLE_TIMEOUT_MIN * 60:.0f} s)")


def test_serve_autoscaling_adds_and_removes_explainer_replicas_and_nodes(autoscaling_cluster, digits_on_s3,
                                                                         tmp_path):
    """The digits application with the Explainer autoscaling from 1 to 2 replicas of one GPU each: under steady load
    it scales to two replicas on two GPU nodes the autoscaler starts for them; without load it returns to one
    replica, and the node of the other is removed."""
    c = autoscaling_cluster
    _, ckpt = digits_on_s3
    (port,) = free_ports(1)

    def autoscaling_on_gpus(deps: dict) -> None:
        # The shipped autoscaling_config (target_ongoing_requests 1, upscale_delay_s 5), with a short downscale
        # delay (120 s shipped) so that the test sees it; a GPU per replica, as on cluster/aws.yaml's GPU nodes.
        deps["Explainer"]["autoscaling_config"].update(min_replicas=1, max_replicas=2, downscale_delay_s=15)
        deps["Explainer"]["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 1}
        deps["Ingress"].pop("autoscaling_config")
        deps["Ingress"].update(num_replicas=1, ray_actor_options={"num_cpus": 0.25, "resources": {"head": 0.5}})

    t0 = time.time()
    deploy(c, ckpt, port, tmp_path / "serve_config.yaml", autoscaling_on_gpus)
    try:
        wait_for(lambda: len(running_on(c)) == 1, 300, lambda: f"no Explainer replica: {explainer_replicas(c)}")
        first_at = time.time()
        assert len(gpu_nodes(c)) == 1
        with Load(f"http://127.0.0.1:{port}/v1/explain/gradient", digits_png(), n=8) as load:
            wait_for(load.answered, 300, lambda: f"no answer: {load.results[-5:]}", every=0.5)
            loaded_at = time.time()
            up_at = wait_for(lambda: len(running_on(c)) == 2, 400,
                             lambda: f"not scaled up: {explainer_replicas(c)}, GPU nodes {gpu_nodes(c)}")
            nodes_up = set(running_on(c))
            assert len(nodes_up) == 2 and nodes_up <= gpu_nodes(c)  # one new GPU node for the new replica
            time.sleep(10)                                          # steady on two replicas
        unloaded_at = time.time()
        run = load.since(loaded_at)
        failed = [r for r in run if r[2] != 200]
        down_at = wait_for(lambda: len(running_on(c)) == 1 and len(explainer_replicas(c)) == 1, 400,
                           lambda: f"not scaled down: {explainer_replicas(c)}")
        node_gone_at = wait_for(lambda: len(gpu_nodes(c)) == 1, 300, lambda: f"GPU nodes: {gpu_nodes(c)}")
        print(f"\n[multinode] autoscaler, Serve: first replica (and its GPU node) {first_at - t0:.0f} s after "
              f"`serve deploy`; under load ({len(run) / (unloaded_at - loaded_at):.1f} req/s, 8 clients) 2 replicas "
              f"on 2 GPU nodes {up_at - loaded_at:.1f} s after the load began; without load 1 replica "
              f"{down_at - unloaded_at:.1f} s after it stopped (downscale_delay_s 15), its node removed "
              f"{node_gone_at - down_at:.1f} s later; {len(failed)} of {len(run)} requests failed meanwhile")
        assert len(failed) / len(run) < 0.01, [r[2] for r in failed][:20]
    finally:
        shutdown(c)
    wait_for(lambda: not gpu_nodes(c), 300, lambda: f"GPU nodes left after serve shutdown: {gpu_nodes(c)}")
