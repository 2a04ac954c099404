"""Helpers for the reproduction stages' tests: three seeds, a stage's rows grouped by claim ID, and a stage's section
of the smoke config."""

from pathlib import Path

SEEDS = (0, 1, 2)
SMOKE = Path(__file__).parents[4] / "configs" / "reproduce_smoke.yaml"


def smoke_section(name: str) -> dict:
    """The smoke config's section of stage ``name``: the budget the whole-job smoke test runs it at too."""
    from interp_ray.config import read_yaml

    return read_yaml(SMOKE)["stages"][name]


def by_claim(rows: list[dict]) -> dict[str, list[dict]]:
    """claim ID → its rows, in order (a claim may have several: one per protocol or dataset)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["claim"], []).append(r)
    return out


def verdict_rows(stage, make_seed, **kw) -> dict[str, dict]:
    """``stage.rows`` over ``SEEDS`` built by ``make_seed(**kw)``, one row per claim; a list value in ``kw`` gives each
    seed its own value (to make the seeds' spread)."""
    per_seed = {s: make_seed(**{k: (v[i] if isinstance(v, list) else v) for k, v in kw.items()})
                for i, s in enumerate(SEEDS)}
    return {r["claim"]: r for r in stage.rows(per_seed, {})}
