"""benchmarks/store_scale.py at tiny sizes: two sizes into moto's S3 with one training epoch each, and the kill -9 run
at a third whose rerun leaves every row present exactly once."""

import pytest

from benchmarks.store_scale import main


@pytest.mark.ray
@pytest.mark.benchmark_run
def test_tiny_sizes_and_a_kill_partway(tmp_path, capsys, machine_lock):
    # The kill run is 48 parts, killed at a quarter: its tiny parts land a few a second, and a kill at half of 12
    # parts once came after all 12 had landed (the poll and the process-tree walk take a while on a loaded machine).
    got = main(["--sizes", "600,1200,9600", "--shard-rows", "200", "--batches", "1", "--kill-at", "0.25",
                "--workdir", str(tmp_path)])
    small, large = got["sizes"][600], got["sizes"][1200]
    assert small["store_rows"] == 600 and large["store_rows"] == 1200
    assert small["store_parts"] == 3 and large["store_parts"] == 6  # 200 rows a part
    assert small["extract_rows_per_s"] > 0 and large["train_rows_per_s"] > 0
    # the stream's start-up is apart from its rate: streaming alone is at least the whole epoch's rate
    assert large["train_first_batch_s"] > 0 and large["train_stream_rows_per_s"] >= large["train_rows_per_s"]
    assert small["store_manifest_bytes"] > 0 and large["store_open_s"] > 0
    kill = got["kill"]
    # killed partway (some parts, not all), then the rerun computed only the rest and nothing is doubled or lost
    assert 0 < kill["parts_at_kill"] < kill["parts_total"] == 48
    assert kill["rerun_computed_rows"] == 9600 - 200 * kill["parts_at_kill"]
    assert kill["every_row_once"] and kill["rows_read"] == kill["distinct_indices"] == 9600
    out = capsys.readouterr().out
    assert "ratio_extract_rows_per_s_largest_over_smallest:" in out and "kill.every_row_once: True" in out
