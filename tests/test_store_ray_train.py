"""The store feeds Ray Train: ``to_ray()`` passed as a trainer dataset, read by ``get_dataset_shard`` on each worker."""

import json

import numpy as np
import pytest

from interp_ray.store import ActivationStore, finalize_store, prepare_store
from test_store import ROWS, fill, manifest, rows


def _train_func(config):
    import ray.train

    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    seen, ok = [], True
    for batch in shard.iter_torch_batches(batch_size=4):
        index = batch["index"].numpy()
        seen += index.tolist()
        # Every row's tensor arrives in its layer's shape, with the values written for that row.
        ok &= bool(np.allclose(batch["conv"].numpy(), rows(index)["conv"]))
    with open(f"{config['out']}/rank{ctx.get_world_rank()}.json", "w") as f:
        json.dump({"seen": seen, "ok": ok}, f)


@pytest.mark.ray
def test_two_train_workers_split_the_store_between_them(ray_local, tmp_path):
    import sys

    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer

    # Test modules are not importable on the workers: ship this one and its helpers by value.
    for name in (__name__, "test_store"):
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])
    loc = str(tmp_path / "s")
    m, _ = prepare_store(loc, manifest())
    fill(loc, m, np.arange(ROWS))
    finalize_store(loc, m)
    ds = ActivationStore.open(loc, key=m.key).to_ray(columns=["index", "conv"])
    out = tmp_path / "seen"
    out.mkdir()
    TorchTrainer(_train_func, train_loop_config={"out": str(out)}, datasets={"train": ds},
                 scaling_config=ray.train.ScalingConfig(num_workers=2),
                 run_config=ray.train.RunConfig(storage_path=str(tmp_path / "runs"), name="store-shards")).fit()
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(g["ok"] for g in got)
    a, b = (set(g["seen"]) for g in got)
    assert a and b and not (a & b)                        # each worker reads its own rows, none twice …
    assert len(got[0]["seen"]) == len(a) and len(got[1]["seen"]) == len(b)
    # … in equal shares: Ray Train's DataConfig splits with equal=True (not configurable in Ray 2.60), so of 23 rows
    # on 2 workers one is left out of the epoch (docs/activation_store.md says so; evaluation reads the store whole).
    assert len(a) == len(b) == ROWS // 2
    assert a | b <= set(range(ROWS))
