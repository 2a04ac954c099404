"""Helpers for the reproduction stages' verdict tests: three seeds, and a stage's rows grouped by claim ID."""

SEEDS = (0, 1, 2)


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
