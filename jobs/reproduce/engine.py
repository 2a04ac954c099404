"""The reproduction job's engine: every claim of the papers (PAPERS.md, "What a faithful reimplementation must
reproduce") measured over seeds, with the verdicts computed, into one report.

    python -m jobs.reproduce --config configs/reproduce.yaml [--out DIR] [--only STAGE[,STAGE]] [--fresh]

**Stages.** Each module of ``jobs.reproduce.stages`` (a ``_private`` one excepted) is a stage, found by a package
scan as the main job's are. A stage module defines:

- ``NAME: str``: its key in the config's ``stages:`` section;
- ``run(section: dict, seed: int, workdir: pathlib.Path) -> dict``: one seed's JSON-safe measurements. Ray is already
  initialised. ``workdir`` (``<out>/<stage>/seed<k>/``) is private to (stage, seed) and survives restarts, so a Ray
  Train run stored under it resumes; ``shared_dir(workdir)`` (``<out>/shared/``) is for what several stages or seeds
  reuse (classifiers, the activation store);
- ``rows(per_seed: dict[int, dict], section: dict) -> list[dict]``: its report rows from the finished seeds' results.
  Each row has the keys ``claim`` ("FLINT 2": the claim ID of PAPERS.md), ``statement``, ``paper`` (the paper's figure
  as text), ``ours`` (text, mean ± std over seeds: ``interp_ray.reproduction.fmt_mean_std``), ``verdict`` ("met" |
  "not met" | "not tested") and ``how`` (how the verdict was computed, what was cut against the paper's budget, or
  why it is not tested). Optional: ``table``, a side-by-side table printed after the claims table (e.g. FLINT's
  Table 1 FashionMNIST row beside ours): ``{"title": str, "columns": [str, …], "rows": [[str, …], …]}``. A claim may
  have several rows (one per dataset or metric protocol);
- optional ``CLAIMS: tuple[str, ...]``: the claim IDs it answers, so a stage with no finished seed still shows its
  claims as "not tested" with the reason (failed, not run), instead of "no stage".

**Resuming.** Each (stage, seed) result is written to ``<out>/<stage>/seed<k>.json`` atomically once it finishes,
with a key hashing the stage's config section. A rerun skips every seed whose file holds the current key; a failing
seed leaves the files already written intact, the other seeds and stages still run, the report is written from what
finished, and the job exits 1. A file with another key (the section changed) is left in place but not reported
until the seed is rerun (``--fresh`` reruns everything).

**Time.** A seed's time is the time its processes ran, not counting the time they were stopped (``StopWatch``), and
summed over every run of it: the count is kept in ``<workdir>/time.json`` every 10 s, so a seed killed partway and
resumed from its steps reports both runs (less at most 10 s per kill), not only the last.

**Report.** ``<out>/reproduction.md`` and ``<out>/results.json``, copied to ``report`` (default
``docs/reproduction.md``) and beside it (``docs/reproduction.json``): the command, wall time and machine, then one
table with a row for every claim ID (``interp_ray.reproduction.CLAIM_IDS``; an ID no stage answers shows as "not
tested — no stage"), then the stages' side tables. ``results.json``'s ``claims`` is that table: a list of the rows
(the keys above plus ``stage``, None for a "no stage" row) in PAPERS.md order.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
import platform
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from pydantic import Field

from interp_ray.claims import REPRODUCTION
from interp_ray.config import Section, load_config
from interp_ray.errors import UserError
from interp_ray.jsonsafe import write_json_atomic
from interp_ray.reproduction import CLAIM_IDS, VERDICTS
from jobs.common import base_parser, check_storage_paths, init_ray

DESCRIPTION = "The reproduction job: every claim of the papers, over seeds, beside the paper's figure, into one report."
STAGES_PACKAGE = f"{__package__}.stages"
ROW_KEYS = ("claim", "statement", "paper", "ours", "verdict", "how")
SEED_FORMAT = 1


class ReproduceConfig(Section):
    output_dir: str = "outputs/reproduce"
    report: str | None = REPRODUCTION   # the Markdown report copied here (None: only <out>); the claims table links it
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


# --- the stage registry --------------------------------------------------------------------------------------------

def load_stage_modules() -> dict[str, ModuleType]:
    """NAME → module for every module of the stages package, checked to define the interface."""
    package = importlib.import_module(STAGES_PACKAGE)
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{STAGES_PACKAGE}.{info.name}")
        missing = [a for a in ("NAME", "run", "rows") if not hasattr(mod, a)]
        if missing:
            raise TypeError(f"reproduction stage module {mod.__name__} lacks {', '.join(missing)}")
        if mod.NAME in found:
            raise TypeError(f"reproduction stage {mod.NAME!r} defined twice ({found[mod.NAME].__name__}, "
                            f"{mod.__name__})")
        found[mod.NAME] = mod
    return found


def selected(cfg: ReproduceConfig, modules: dict[str, ModuleType], only: Sequence[str] | None) -> list[str]:
    """The config's enabled stages (in file order), or the ``only`` ones; an unknown name is a UserError."""
    unknown = [s for s in cfg.stages if s not in modules]
    if unknown:
        raise UserError(f"stages.{unknown[0]}: no such reproduction stage; stages: {', '.join(modules)}")
    missing = [s for s in only or [] if s not in cfg.stages]
    if missing:
        raise UserError(f"--only {missing[0]}: not a stage of this config; its stages: {', '.join(cfg.stages)}")
    return [s for s in cfg.stages if (not only or s in only) and cfg.stages[s].get("enabled", True)]


def section_key(section: dict[str, Any]) -> str:
    """What a seed's result depends on: the stage's config section (``enabled`` aside)."""
    payload = {"format": SEED_FORMAT, "section": {k: v for k, v in section.items() if k != "enabled"}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- seed files ----------------------------------------------------------------------------------------------------

def seed_path(out: Path, stage: str, seed: int) -> Path:
    return out / stage / f"seed{seed}.json"


def workdir_for(out: Path, stage: str, seed: int) -> Path:
    return out / stage / f"seed{seed}"


def shared_dir(workdir: Path) -> Path:
    """``<out>/shared/``: what several stages or seeds reuse (a classifier, the activation store)."""
    return Path(workdir).parents[1] / "shared"


def load_seed(out: Path, stage: str, seed: int, key: str) -> dict[str, Any] | None:
    """A finished seed's saved record, if it was measured under the current section (same key)."""
    try:
        saved = json.loads(seed_path(out, stage, seed).read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("key") == key and "result" in saved else None


def save_seed(out: Path, stage: str, seed: int, record: dict[str, Any]) -> None:
    """Atomically: a killed run leaves either the old file or the whole new one, never half of one."""
    write_json_atomic(seed_path(out, stage, seed), record, indent=2, default=str)


class StopWatch:
    """Wall time less the time this process was stopped (SIGSTOP, a suspended shell job): a thread ticks every
    ``tick`` s, and a gap between ticks longer than ``gap`` s is counted as stopped. A run paused so that a benchmark
    or a test suite has the machine reports the time it ran, with the pauses beside it, not inflated by them.

    With a ``ledger`` file, the times so far are written to it every ``save_every`` s and the count starts from what
    an earlier, interrupted run of the same work left there (its ``key`` must match): a stage-seed that resumes its
    steps after a kill reports the time all its runs took, short of at most ``save_every`` s per interruption."""

    def __init__(self, tick: float = 0.5, gap: float = 5.0, ledger: Path | None = None, key: str = "",
                 save_every: float = 10.0):
        self.tick, self.gap, self.ledger, self.key, self.save_every = tick, gap, ledger, key, save_every
        self.earlier_running, self.earlier_stopped = self._read_ledger()
        self.t0 = self.last = self._saved = time.monotonic()
        self._stopped = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stopwatch", daemon=True)
        self._thread.start()

    def _read_ledger(self) -> tuple[float, float]:
        try:
            kept = json.loads(self.ledger.read_text()) if self.ledger else {}
        except (OSError, ValueError):
            return 0.0, 0.0
        if kept.get("key") != self.key:
            return 0.0, 0.0
        return float(kept.get("running_s", 0.0)), float(kept.get("stopped_s", 0.0))

    def _run(self) -> None:
        while not self._done.wait(self.tick):
            now = time.monotonic()
            if now - self.last > self.gap:
                self._stopped += now - self.last - self.tick
            self.last = now
            if self.ledger is not None and now - self._saved >= self.save_every:
                self._save(*self._totals(now))
                self._saved = now

    def _totals(self, now: float) -> tuple[float, float]:
        wall = now - self.t0
        return self.earlier_running + wall - self._stopped, self.earlier_stopped + self._stopped

    def _save(self, running: float, stopped: float) -> None:
        try:
            write_json_atomic(self.ledger, {"key": self.key, "running_s": running, "stopped_s": stopped})
        except OSError:
            pass   # the ledger only improves the reported time; a full disk must not fail the stage

    def stop(self) -> tuple[float, float]:
        """(seconds running, seconds stopped), the earlier runs' in the ledger included; the ledger keeps them, so a
        seed that fails and is rerun counts its failed run too."""
        self._done.set()
        self._thread.join()
        running, stopped = self._totals(time.monotonic())
        if self.ledger is not None:
            self._save(running, stopped)
        return running, stopped


def run_stage_seeds(out: Path, name: str, module: ModuleType, section: dict[str, Any], seeds: Sequence[int], *,
                    fresh: bool) -> list[dict[str, Any]]:
    """Run every seed of one stage that has no current result; the failures (seed, error) it met."""
    key = section_key(section)
    failures = []
    for seed in seeds:
        if not fresh and load_seed(out, name, seed, key) is not None:
            print(f"[reproduce] {name} seed {seed}: finished in an earlier run (key {key}), skipped", flush=True)
            continue
        workdir = workdir_for(out, name, seed)
        ledger = workdir / "time.json"
        if fresh:
            ledger.unlink(missing_ok=True)
        watch = StopWatch(ledger=ledger, key=key)
        print(f"[reproduce] {name} seed {seed} …" + (f" (earlier runs of it: {watch.earlier_running:.0f} s)"
                                                       if watch.earlier_running else ""), flush=True)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            result = module.run(dict(section), seed, workdir)
            json.dumps(result)   # JSON-safe, as the interface promises: fail here, not when the report reads it
        except Exception as e:   # noqa: BLE001 -- one seed's failure must not lose the other seeds and stages
            traceback.print_exc()
            failures.append({"stage": name, "seed": seed, "error": f"{type(e).__name__}: {e}".splitlines()[0]})
            print(f"[reproduce] {name} seed {seed} FAILED after {watch.stop()[0]:.0f} s: "
                  f"{failures[-1]['error']}", flush=True)
            continue
        seconds, stopped = watch.stop()
        save_seed(out, name, seed, {"key": key, "stage": name, "seed": seed, "seconds": seconds, "stopped_s": stopped,
                                    "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                    "result": result})
        print(f"[reproduce] {name} seed {seed}: done in {seconds:.0f} s"
              + (f" (and {stopped:.0f} s stopped)" if stopped else ""), flush=True)
    return failures


# --- the report ----------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "gpu": gpu, "platform": platform.platform()}


def check_row(row: dict[str, Any], stage: str) -> dict[str, Any]:
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise TypeError(f"stage {stage}: a report row lacks {', '.join(missing)}: {row}")
    if row["verdict"] not in VERDICTS:
        raise TypeError(f"stage {stage}: verdict {row['verdict']!r} is not one of {VERDICTS}")
    return {**row, "stage": stage}


def stage_rows(name: str, module: ModuleType, section: dict[str, Any], per_seed: dict[int, dict[str, Any]],
               seeds: Sequence[int], failures: list[dict[str, Any]], ran: bool) -> list[dict[str, Any]]:
    """The stage's rows from its finished seeds; with none (or when rows() fails), a "not tested" row per claim it
    declares, saying why."""
    failed = [f for f in failures if f["stage"] == name]
    why_missing = ("; ".join(f"seed {f['seed']} failed: {f['error']}" for f in failed) if failed
                   else "not run yet (rerun the job, or --only " + name + ")" if not ran else "no seed finished")
    if per_seed:
        try:
            rows = [check_row(r, name) for r in module.rows(per_seed, section)]
        except Exception as e:   # noqa: BLE001 -- a broken stage report must not take the other stages' rows down
            traceback.print_exc()
            why_missing = f"its rows() failed: {type(e).__name__}: {e}".splitlines()[0]
        else:
            done = sorted(per_seed)
            if len(done) < len(seeds):
                note = (f" Only seeds {done} of {list(seeds)} finished"
                        + (f" ({why_missing})" if failed else "") + ".")
                rows = [{**r, "how": sentence(r["how"]) + note} for r in rows]
            return rows
    return [{"claim": c, "statement": "—", "paper": "—", "ours": "—", "verdict": "not tested",
             "how": f"stage {name}: {why_missing}", "stage": name} for c in getattr(module, "CLAIMS", ())]


def sentence(text: str) -> str:
    """``text`` ending as a sentence does, so a note appended after it reads as the next one."""
    text = text.rstrip()
    return text if not text or text[-1] in ".!?)" else text + "."


def claim_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim ID in PAPERS.md order, each with its rows (a missing ID: one "no stage" row), then any row whose
    claim is not an ID of PAPERS.md (kept, so a typo shows)."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(r["claim"], []).append(r)
    table = []
    for cid in CLAIM_IDS:
        table += by_id.pop(cid, None) or [{"claim": cid, "statement": "—", "paper": "—", "ours": "—",
                                           "verdict": "not tested", "how": "not tested — no stage answers it",
                                           "stage": None}]
    for rest in by_id.values():
        table += rest
    return table


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def unpaused_note(header: dict[str, Any]) -> str:
    untimed = header["unmeasured_stops"]
    if not untimed:
        return ""
    its, they = ("its", "it was") if len(untimed) == 1 else ("their", "they were")
    return (f"; {', '.join(untimed)} finished before stops were measured, so {its} time includes any time {they}"
            " stopped")


def markdown(table: list[dict[str, Any]], header: dict[str, Any]) -> str:
    m = header["machine"]
    counts = {v: sum(r["verdict"] == v for r in table) for v in VERDICTS}
    lines = ["# Reproduction report", "",
             "Every claim of ../shared/PAPERS.md (\"What a faithful reimplementation must reproduce\"), measured over "
             "seeds where our data can test it, beside the paper's figure. Written by the reproduction job "
             "(`jobs/reproduce`); the verdict rule is `interp_ray/reproduction.py`'s: **a comparison claim is met "
             "when it holds beyond the seeds' spread** (mean(a) − mean(b) > std(a) + std(b), sample std over seeds).",
             "",
             f"- Command: `{header['command']}`",
             f"- Wall time: {header['wall_s']:.0f} s in all (the finished stage-seeds' own times summed over every "
             f"run that contributed, not counting {header['stopped_s']:.0f} s when their processes were stopped; "
             f"this run: {header['this_run_s']:.0f} s)" + unpaused_note(header),
             f"- Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; Python {m['python']}, torch {m['torch']}, "
             f"Ray {m['ray']}",
             f"- Seeds: {header['seeds']}; stages: {', '.join(header['stages']) or 'none'}",
             f"- Rows: {len(table)} ({counts['met']} met, {counts['not met']} not met, {counts['not tested']} "
             "not tested)", ""]
    if header["failures"]:
        lines += ["**Failures in this run:** " + "; ".join(f"{f['stage']} seed {f['seed']}: {f['error']}"
                                                        for f in header["failures"]), ""]
    lines += ["| claim | statement | paper | ours | verdict | how |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {_cell(r['statement'])} | {_cell(r['paper'])} | {_cell(r['ours'])} | "
              f"**{r['verdict']}** | {_cell(r['how'])} |" for r in table]
    for r in table:
        t = r.get("table")
        if not t:
            continue
        lines += ["", f"## {t['title']}", "", "| " + " | ".join(map(_cell, t["columns"])) + " |",
                  "|---" * len(t["columns"]) + "|"]
        lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in t["rows"]]
    return "\n".join(lines) + "\n"


def write_report(cfg: ReproduceConfig, out: Path, modules: dict[str, ModuleType], ran: Sequence[str],
                 failures: list[dict[str, Any]], this_run_s: float, command: str) -> Path:
    """The report from every finished seed file on disk of the config's enabled stages (this run's and earlier
    runs')."""
    rows: list[dict[str, Any]] = []
    per_stage: dict[str, Any] = {}
    wall, stopped, unmeasured = 0.0, 0.0, []
    enabled = [s for s in cfg.stages if cfg.stages[s].get("enabled", True)]
    for name in enabled:
        section = cfg.stages[name]
        key = section_key(section)
        records = {s: r for s in cfg.seeds if (r := load_seed(out, name, s, key)) is not None}
        wall += sum(float(r["seconds"]) for r in records.values())
        stopped += sum(float(r.get("stopped_s", 0.0)) for r in records.values())
        unmeasured += [f"{name} seed {s}" for s, r in records.items() if "stopped_s" not in r]
        per_seed = {s: r["result"] for s, r in records.items()}
        per_stage[name] = {"seeds": sorted(per_seed), "key": key, "per_seed": per_seed,
                           "seconds": {s: r["seconds"] for s, r in records.items()}}
        rows += stage_rows(name, modules[name], section, per_seed, cfg.seeds, failures, name in ran)
    table = claim_table(rows)
    header = {"command": command, "wall_s": wall, "stopped_s": stopped, "unmeasured_stops": unmeasured,
              "this_run_s": this_run_s, "machine": machine(),
              "seeds": list(cfg.seeds), "stages": enabled, "failures": failures}
    text = markdown(table, header)
    (out / "reproduction.md").write_text(text)
    (out / "results.json").write_text(json.dumps({**header, "claims": table, "stages": per_stage,
                                                  "config": cfg.model_dump()}, indent=2, default=str))
    if cfg.report:   # the Markdown, and beside it the results (docs/reproduction.json) for the claims table to read
        Path(cfg.report).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "reproduction.md", cfg.report)
        shutil.copyfile(out / "results.json", Path(cfg.report).with_suffix(".json"))
    return out / "reproduction.md"


# --- driver --------------------------------------------------------------------------------------------------------

def run(cfg: ReproduceConfig, *, only: Sequence[str] | None = None, fresh: bool = False,
        command: str = "python -m jobs.reproduce") -> tuple[Path, list[dict[str, Any]]]:
    """Run the selected stages' missing seeds (Ray already initialised), then write the report; returns the report's
    path and the failures."""
    t0 = time.perf_counter()
    modules = load_stage_modules()
    stages = selected(cfg, modules, only)
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    failures: list[dict[str, Any]] = []
    for name in stages:
        failures += run_stage_seeds(out, name, modules[name], cfg.stages[name], cfg.seeds, fresh=fresh)
    report = write_report(cfg, out, modules, stages, failures, time.perf_counter() - t0, command)
    return report, failures


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(DESCRIPTION)
    p.add_argument("--out", help="output directory (overrides output_dir)")
    p.add_argument("--only", help="comma-separated stages to run (default: every enabled stage); the report still "
                                  "shows every stage's finished seeds")
    p.add_argument("--fresh", action="store_true", help="rerun every seed, even those an earlier run finished")
    args = p.parse_args(argv)
    cfg = load_config(ReproduceConfig, args.config, args.overrides)
    if args.out:
        cfg.output_dir = args.out
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    selected(cfg, load_stage_modules(), only)   # bad names fail before Ray starts
    check_storage_paths(output_dir=cfg.output_dir)
    init_ray(args.address)
    command = " ".join(["python -m jobs.reproduce", *(argv if argv is not None else sys.argv[1:])])
    report, failures = run(cfg, only=only, fresh=args.fresh, command=command)
    print(f"[reproduce] report: {report}" + (f" (copied to {cfg.report})" if cfg.report else ""), flush=True)
    return 1 if failures else 0
