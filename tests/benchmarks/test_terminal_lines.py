"""benchmarks/terminal_lines.py sorts a transcript's lines by source (the figures in README, "What the terminal
shows"): lines as Ray 2.60 and the jobs print them, copied from a run."""

from benchmarks.terminal_lines import count

TRANSCRIPT = """\
2026-12-06 07:19:56,294\tINFO worker.py:2029 -- Started a local Ray instance. View the dashboard at http://127.0.0.1:8265
\x1b[36m(TrainController pid=13130)\x1b[0m [2026-12-06 07:20:06,450 E 13130 13210] core_worker.cc:2465: Actor with \
class name: 'PreemptionWatcher' has constructor arguments in the object store and max_restarts > 0.
\x1b[36m(TrainController pid=13130)\x1b[0m [train] digits_cnn-1: epoch 1 (0 s): train_loss 2.072
digits_cnn on digits: test accuracy 0.8694 (val 0.8722, 2 epochs); checkpoint: /tmp/clf
2026-12-06 07:20:25,538 interp_ray.extract: train: 1 of 1 shards to compute (1257 rows) → /tmp/act
2026-12-06 07:20:25,833\tINFO streaming_executor.py:215 -- Starting execution of Dataset dataset_0. Full logs in
[2026-12-06 07:20:25,857 E 14020 14020] core_worker.cc:2465: Actor with class name: 'MapWorker' has constructor args
2026-12-06 07:20:26,131\tINFO logging_progress.py:225 -- Total Progress: 0/?
/venv/lib/python3.11/site-packages/ray/data/_internal/execution/interfaces/execution_options.py:436: \
RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated
  self.exclude_resources = exclude_resources
\x1b[36m(SplitCoordinator pid=15596)\x1b[0m Execution plan of Dataset train_0: InputDataBuffer[Input] -> ReadParquet
\x1b[36m(RayTrainWorker pid=15356)\x1b[0m Progress bars disabled. To enable, set `enable_progress_bars = True`.
[progress] train rows: 1257/1257 rows (100%), 161 rows/s, done; 1/1 parts written, 0 MiB
vibi: best epoch 2 of 3 (val_loss 1.8055); checkpoint: /tmp/vibi
"""


def test_each_line_goes_to_its_source():
    assert count(TRANSCRIPT) == {"ours": 5, "ray_data": 4, "ray_core": 5}
