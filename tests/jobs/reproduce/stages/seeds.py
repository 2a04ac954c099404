"""Report rows from made-up seed results, for the stages' verdict tests."""

from typing import Any, Callable


def verdict_rows(stage: Any, make_seed: Callable[..., dict], **kw: Any) -> dict[str, dict]:
    """``stage.rows`` over three seeds built by ``make_seed``; a list value in ``kw`` gives each seed its own."""
    per_seed = {s: make_seed(**{k: (v[i] if isinstance(v, list) else v) for k, v in kw.items()})
                for i, s in enumerate((0, 1, 2))}
    return {r["claim"]: r for r in stage.rows(per_seed, {})}
