"""Helpers for the reproduction stages' verdict tests: three seeds, and a stage's rows grouped by claim ID."""

SEEDS = (0, 1, 2)


def by_claim(rows: list[dict]) -> dict[str, list[dict]]:
    """claim ID → its rows, in order (a claim may have several: one per protocol or dataset)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["claim"], []).append(r)
    return out
