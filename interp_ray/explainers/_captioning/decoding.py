"""The one greedy decoding loop of the captioning methods. Each model supplies its own ``step`` (one word for every
sequence, from whatever state it carries: InterpNET's two LSTM states, the attention decoder's (h, c)); the loop
keeps the ids, stops each sequence at ``<end>`` and sums the chosen words' log-probabilities."""

from __future__ import annotations

from typing import Any, Callable

import torch

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


@torch.no_grad()
def greedy_search(step: Step, state: Any, n: int, *, max_len: int, start: int, end: int,
                  device: torch.device | str | None = None) -> tuple[list[list[int]], list[float]]:
    """The most likely word at every step until ``<end>`` or ``max_len`` steps, for ``n`` sequences.

    ``step(previous ids (n,), state) -> (log-probabilities n × V, new state)``. Returns the ids of each sequence
    without the end token, and each sequence's log-probability (end token included; words after a sequence ended
    do not count). ``device``: where the step wants its ids; the answers are gathered on the CPU.
    """
    if n == 0:
        return [], []
    prev = torch.full((n,), start, dtype=torch.long, device=device)
    out = torch.full((n, max_len), end, dtype=torch.long)
    lengths = torch.full((n,), max_len, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    scores = torch.zeros(n, dtype=torch.float64)
    for t in range(max_len):
        logp, state = step(prev, state)
        word = logp.argmax(dim=1)
        live = ~done
        scores[live] += logp.gather(1, word[:, None])[:, 0].double().cpu()[live]
        out[:, t] = word.cpu()
        finished = live & (word.cpu() == end)
        lengths[finished] = t
        done |= finished
        if bool(done.all()):
            break
        prev = word
    return [out[i, :lengths[i]].tolist() for i in range(n)], scores.tolist()
