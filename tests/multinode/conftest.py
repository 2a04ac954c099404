"""The multi-node scenarios' cluster: a head and two worker nodes on 127.0.0.1 plus an S3 server, all started by
scripts/local_cluster.py and stopped at the end of the module, whatever happened.

Nothing here calls ray.init: a pytest process can join only one Ray cluster, and the session's own local Ray
(``ray_session``) may be up. Every driver is a subprocess (a job's CLI, `ray job submit`), as users run them."""

from __future__ import annotations

import uuid

import pytest

from local_cluster import LocalCluster, Node, _group_alive, make_bucket

# One train worker and one Explainer replica per worker node: each offers one CPU, one "trainer" and one
# "explainer"; the head offers neither, nor more than the CPU a job's driver-side work needs.
WORKERS = [Node("w1", 1, {"trainer": 1, "explainer": 1, "w1": 1}),
           Node("w2", 1, {"trainer": 1, "explainer": 1, "w2": 1})]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster.started(workers=[Node(n.name, n.cpus, dict(n.resources)) for n in WORKERS],
                              timeout=150) as c:
        yield c
        groups = [n.pid for n in [c.head, *c.workers]] + [c.s3_pid]
    # Every process group the harness started is gone (nodes, their workers, the S3 server).
    assert not [pid for pid in groups if pid and _group_alive(pid)]


@pytest.fixture
def bucket(cluster):
    name = f"mn-{uuid.uuid4().hex[:10]}"
    make_bucket(cluster.s3_endpoint, name)
    return name
