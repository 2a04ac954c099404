"""The train-from-store benchmark at a tiny size: its store, one measured Ray Train run, and its arithmetic."""

import pytest

from benchmarks.train_from_store import child, job_for, make_classifier, measure, parse, summarise


def test_measure_skips_the_first_epoch_and_summarise_compares_largest_with_smallest():
    hist = [{"rows_per_rank": [512], "epoch_s": 10.0, "stream_s": 5.0, "first_batch_s": 4.0,
             "peak_rss_mib_per_rank": [900.0]},
            {"rows_per_rank": [512], "epoch_s": 2.0, "stream_s": 1.0, "first_batch_s": 0.5,
             "peak_rss_mib_per_rank": [950.0], "peak_anon_mib_per_rank": [400.0], "shmem_mib_per_rank": [300.0]},
            {"rows_per_rank": [512], "epoch_s": 2.0, "stream_s": 1.0, "first_batch_s": 0.5,
             "peak_rss_mib_per_rank": [940.0], "peak_anon_mib_per_rank": [410.0], "shmem_mib_per_rank": [280.0]}]
    m = measure(hist)
    assert m["rows_per_s"] == pytest.approx(256.0) and m["worker_peak_rss_mib"] == 950.0 and m["epoch_s"] == 2.0
    assert m["stream_rows_per_s"] == pytest.approx(512.0) and m["first_batch_s"] == pytest.approx(0.5)
    assert m["worker_peak_anon_mib"] == 410.0 and m["worker_shmem_mib"] == 300.0
    rows = [{"size": 10, "rows_per_s": 100.0, "stream_rows_per_s": 200.0, "worker_peak_rss_mib": 1000.0,
             "worker_peak_anon_mib": 400.0, "driver_peak_rss_mib": 500.0},
            {"size": 40, "rows_per_s": 90.0, "stream_rows_per_s": 210.0, "worker_peak_rss_mib": 1100.0,
             "worker_peak_anon_mib": 420.0, "driver_peak_rss_mib": 550.0}]
    s = summarise(rows)
    assert s["rows_per_s_ratio"] == pytest.approx(0.9) and s["worker_rss_ratio"] == pytest.approx(1.1)
    assert s["driver_rss_ratio"] == pytest.approx(1.1) and s["rows_per_s_spread"] == pytest.approx(5 / 95)
    assert s["stream_rows_per_s_ratio"] == pytest.approx(1.05) and s["worker_anon_ratio"] == pytest.approx(1.05)


@pytest.mark.ray
def test_one_size_trains_the_same_batches_from_its_store(ray_local, tmp_path):
    from jobs.train_explainer import role_stores

    args = parse(["--batches", "2", "--epochs", "2", "--workdir", str(tmp_path), "--child", "80"])
    make_classifier(tmp_path / "cnn")
    stores = role_stores(job_for(80, args), ("train", "val"))
    assert len(stores["train"]) == 80 and {"gap", "relu_fc", "sentences"} <= set(stores["train"].columns)
    r = child(args)
    # 80 rows in batches of 256 is one batch per epoch: the cap (2) is not reached, every row is read once
    assert r["size"] == 80 and r["rows_per_epoch"] == 80 and r["rows_per_s"] > 0
    assert r["worker_peak_rss_mib"] > 100 and r["driver_peak_rss_mib"] > 100
    # the worker's private memory is part of its RSS, the rest being pages shared with others
    assert 50 < r["worker_peak_anon_mib"] < r["worker_peak_rss_mib"]
    assert ray_local.is_initialized()  # the session's cluster is not shut down by the benchmark
