"""What the reproduction stages share: a job config from a section (its file, ``set`` overrides, the paths and seed
the stage decides) and the classifiers several stages and seeds explain, trained once into ``<out>/shared/``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from interp_ray.config import ClassifierJobConfig
from interp_ray.errors import UserError
from jobs.pipeline.engine import JobRef
from jobs.reproduce.engine import shared_dir

C = TypeVar("C", bound=BaseModel)


def job_config(ref: dict[str, Any], cls: type[C], where: str, **forced: Any) -> C:
    """``ref`` = ``{config: FILE, set: {dotted: value}}``; ``forced`` sets the keys the stage decides (dots spelled
    ``__``), on top of everything."""
    if not isinstance(ref, dict) or "config" not in ref:
        raise UserError(f"{where}: give `config: FILE` (and optionally `set: {{key: value}}`)")
    job = JobRef(config=ref["config"], set=ref.get("set") or {})
    return job.load(cls, smoke=False, forced={k.replace("__", "."): v for k, v in forced.items()})


def store_root(workdir: Path) -> str:
    """One activation store for the whole job: keyed by content, so stages and seeds reading the same rows of the
    same classifier share it."""
    return str(shared_dir(workdir) / "activations")


def classifier(ref: dict[str, Any], workdir: Path, where: str) -> tuple[str, dict[str, Any]]:
    """The checkpoint of the classifier ``ref`` configures, trained on Ray Train the first time a stage asks for it
    and reused after (by every seed and stage naming the same config). The seeds of a reproduction vary the
    explainer, not this classifier: the papers explain one fixed, pretrained network per dataset."""
    from jobs.train_classifier import train

    cfg = job_config(ref, ClassifierJobConfig, where)
    identity = cfg.model_dump(exclude={"output": True, "run": True})
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = f"{cfg.model.name.replace(':', '-')}-{cfg.data.name}-{digest}"
    root = shared_dir(workdir) / "classifiers"
    out = root / name
    info = out / "reproduce.json"
    if info.is_file() and (out / "config.json").is_file():
        return str(out), json.loads(info.read_text())
    # A fixed run name under the job's own storage: a killed training resumes from its last epoch.
    cfg = job_config(ref, ClassifierJobConfig, where, output=str(out), run__storage_path=str(root / "ray_runs"),
                     run__name=name)
    r = train(cfg)
    meta = {"test_accuracy": r["test_accuracy"], "epochs": len(r["history"]), "model": cfg.model.name,
            "dataset": cfg.data.name, "config": ref["config"], "set": ref.get("set") or {}}
    info.write_text(json.dumps(meta, indent=2))
    return str(out), meta


def values(per_seed: dict[int, dict[str, Any]], *path: str) -> list[float]:
    """One figure over the seeds, in seed order: ``values(per_seed, "lambda_0.1", "meteor")``; a seed without it is
    skipped (the caller's n shows it)."""
    out = []
    for seed in sorted(per_seed):
        v: Any = per_seed[seed]
        for p in path:
            if not isinstance(v, dict) or p not in v:
                v = None
                break
            v = v[p]
        if v is not None:
            out.append(float(v))
    return out


def row(claim: str, statement: str, paper: str, ours: str, verdict: str, how: str, **extra: Any) -> dict[str, Any]:
    return {"claim": claim, "statement": statement, "paper": paper, "ours": ours, "verdict": verdict, "how": how,
            **extra}


def seeds_phrase(per_seed: dict[int, Any]) -> str:
    """"3 seeds (0, 1, 2)", "1 seed (0)": the seeds a row's figures come from."""
    n = len(per_seed)
    return f"{n} seed{'' if n == 1 else 's'} ({', '.join(map(str, per_seed))})"
