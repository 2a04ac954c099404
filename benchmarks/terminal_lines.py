"""How many lines a job leaves on its terminal, and whose: the job's own or Ray's (issue 33, "a terminal for work of
that size"). Runs each command given, as a user would with its output piped (not a TTY: what a log file or
``ray job submit`` sees), and counts the lines of the merged stdout + stderr by source.

    python -m benchmarks.terminal_lines --keep /tmp/transcript.txt -- \\
        "python -m jobs.train_classifier --config configs/digits.yaml --set train.epochs=2 --set output=/tmp/t/clf" \\
        "python -m jobs.train_explainer --config configs/vibi_digits.yaml --set source.checkpoint=/tmp/t/clf …"

Prints ``name: value`` lines: total lines, ours, Ray Data's execution lines ("Starting execution …" / "Execution
plan …" / "… execution finished"), Ray core's log lines (INFO/WARNING/ERROR records and the C++ E/W lines), lines
forwarded from Ray workers and actors that are Ray's, and other Ray lines (progress bars). The classification is by
pattern (``source``); the transcript (``--keep``) lets a reader check it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from collections import Counter

# "(RayTrainWorker pid=123) …", "(MapWorker(MapBatches(X)) pid=5, ip=…) …": a line Ray forwarded from a worker
_FORWARDED = re.compile(r"^(?:\x1b\[[0-9;]*m)*\((?:[^()]|\([^()]*\)|\([^()]*\([^()]*\)[^()]*\))*pid=\d+[^)]*\)"
                        r"(?:\x1b\[[0-9;]*m)* ?")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The job's own lines: its progress lines, its logger's records (jobs.common.run_main's format), its results
OURS = re.compile(r"^(?:\[(?:train|pipeline|progress|extract|explain)\]|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ "
                  r"interp_ray|error: |[\w./-]+: (?:\d+ rows|best epoch|test accuracy)|[\w ()-]+: test accuracy|"
                  r"report: |\s+(?:class \d|\w+ ~ |\d+ pictures))")
RAY_DATA = re.compile(r"Starting execution of Dataset|Execution plan of Dataset|execution finished in|"
                      r"Registered dataset logger|Auto configuring locality_with_output|"
                      r"Tip: For detailed progress reporting|Progress bars disabled|Progress will be logged|"
                      r"(?:logging_progress|parquet_datasource|streaming_executor\w*)\.py:\d+ -- ")
# Ray's Python log format ("2026-12-06 07:20:01,123\tINFO worker.py:…"), its C++ glog lines ("[2026-… E …]" or
# "E1206 07:20:01.123 …"), and the W/E records of its components ("… WARNING … --", "[2026-…] [warning] …")
RAY_CORE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\t(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\b|"
                      r"^\[\d{4}-\d\d-\d\d [\d:.,]+(?: [IWEF] \d+ \d+)?\]|^[IWEF]\d{4} \d\d:\d\d:\d\d|"
                      r"/ray/\S+\.py:\d+: \w*Warning: |"
                      r"^(?:INFO|WARNING|ERROR) \S+\.py:\d+ -- |^\S+ (?:INFO|WARNING|ERROR) \S+\.py:\d+ -- |"
                      r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\s+(?:INFO|WARNING|ERROR)\s")
RAY_BAR = re.compile(r"Running Dataset|Running \d+:|\d+(?:\.\d+)?[kM]? ?row/s|it/s\]|- \w+\([^)]*\): Tasks:|"
                     r"(?:Tasks|Actors|Queued blocks|Resources): |^[\s|█▏▎▍▌▋▊▉]+$|View detailed results here|"
                     r"To visualize your results|Training (?:started|finished|finished iteration)|"
                     r"Ray Train|ray\.train|Dashboard|ray\.init|Connecting to existing Ray|Started a local Ray|"
                     r"View the dashboard|Job submission|Tailing logs|Job '\w+' (?:submitted|succeeded)|"
                     r"-{10,}|Query the (?:status|logs)|Request the job|ray job (?:logs|status|stop)")


def source(line: str) -> str:
    """One of "ours", "ray_data", "ray_core", "ray_forwarded", "ray_other", "blank"."""
    clean = _ANSI.sub("", line).rstrip("\r\n")
    match = _FORWARDED.match(clean)
    body = clean[match.end():] if match else clean
    if not body.strip():
        return "blank"
    if OURS.search(body):
        return "ours"
    if RAY_DATA.search(body):
        return "ray_data"
    if RAY_CORE.search(body):
        return "ray_core"
    if match:
        return "ray_forwarded"
    if RAY_BAR.search(body):
        return "ray_other"
    return "ours"   # anything else the job printed (its result lines, a traceback of its own)


def count(text: str) -> Counter:
    """Lines by ``source``; a carriage-return-updated bar is one line per update, as a log file shows it. The source
    line Python prints under a warning goes with the warning."""
    counts: Counter = Counter()
    previous = ""
    for line in text.splitlines():
        for piece in line.split("\r"):
            if not piece.strip():
                continue
            kind = source(piece)
            if previous and piece.startswith("  ") and "Warning: " in previous:
                kind = source(previous)
            counts[kind] += 1
            previous = piece
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="write the merged transcript here")
    p.add_argument("commands", nargs="+", help="shell commands, run in order (each must succeed)")
    args = p.parse_args(argv)
    transcript, t0 = [], time.perf_counter()
    for command in args.commands:
        proc = subprocess.run(shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        transcript.append(proc.stdout)
        if proc.returncode != 0:
            print(proc.stdout[-4000:], file=sys.stderr)
            print(f"error: {command!r} exited {proc.returncode}", file=sys.stderr)
            return 1
    text = "".join(transcript)
    if args.keep:
        with open(args.keep, "w") as f:
            f.write(text)
    counts = count(text)
    total = sum(v for k, v in counts.items() if k != "blank")
    print(f"seconds: {time.perf_counter() - t0:.0f}")
    print(f"lines_total: {total}")
    for key in ("ours", "ray_data", "ray_core", "ray_forwarded", "ray_other"):
        print(f"lines_{key}: {counts.get(key, 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
