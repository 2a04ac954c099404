"""The Fashion-MNIST store benchmark on a tiny IDX fixture: both contenders see every row of every split."""

import numpy as np
import pytest

from benchmarks.extract_fashion_mnist import main, summarise
from interp_ray.store import ActivationStore
from tests.data.test_fashion_mnist import write_gz


def test_summarise_ratios_and_row_check():
    plain = {"rows": 100, "wall_s": 2.0, "cpu_s": 1.0}
    # one pipeline: train's first rows at 1.0 (after 1 s of start-up), test's rows later, the last at 2.25
    outs = [{"split": "train", "rows": 60, "first_rows": 10, "steady_rows": 50, "first_at": 1.0, "last_at": 2.0,
             "startup_s": 1.0},
            {"split": "test", "rows": 40, "first_rows": 10, "steady_rows": 30, "first_at": 2.1, "last_at": 2.25,
             "startup_s": 2.1}]
    f = summarise(plain, {**plain, "wall_s": 4.0}, outs, store_wall=5.0, store_cpu=4.0)
    assert f["plain_rows_per_s"] == pytest.approx((50 + 25) / 2)
    assert f["store_rows_per_s"] == pytest.approx(20.0)
    # steady: every row after the pipeline's first batch, over the first rows to the last: 90 rows in 1.25 s
    assert f["store_steady_rows_per_s"] == pytest.approx(72.0)
    assert f["store_startup_s"] == pytest.approx(1.0)
    assert f["ratio_total"] == pytest.approx(20 / 37.5) and f["ratio_cpu"] == pytest.approx(10 / 40)
    with pytest.raises(RuntimeError, match="different rows"):
        summarise(plain, {**plain, "rows": 99}, outs, store_wall=5.0, store_cpu=4.0)


@pytest.mark.ray
def test_benchmark_runs_the_real_store_over_every_split(ray_local, tmp_path):
    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    write_gz(root, "train", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), (np.arange(40) % 10).astype(np.uint8))
    write_gz(root, "test", rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), (np.arange(10) % 10).astype(np.uint8))
    work = tmp_path / "work"
    f = main(["--random", "--root", str(root), "--val-rows", "8", "--batch-size", "16", "--shard-rows", "16",
              "--workdir", str(work)])
    assert f["rows"] == 50 and f["store_rows_per_s"] > 0 and f["plain_rows_per_s"] > 0
    assert np.isfinite(f["ratio_total"]) and f["store_mib"] > 0
    stores = sorted(p.parent for p in work.glob("store/flint_mnist/*/_manifest.json"))
    assert sorted(len(ActivationStore.open(str(s))) for s in stores) == [8, 10, 32]
    assert ray_local.is_initialized()  # the session's cluster is not shut down by the benchmark
