"""InterpNET's decoding: greedy (the paper's evaluation; the captioning kit's one greedy loop over LRCN-2f's step)
and beam search with the length normalisation of the paper's code."""

from __future__ import annotations

import math

import torch

from interp_ray.explainers._captioning.decoding import greedy_search
from interp_ray.explainers.interpnet.networks import LRCN2f


@torch.no_grad()
def greedy_decode(decoder: LRCN2f, r: torch.Tensor, *, max_len: int, start: int, end: int
                  ) -> tuple[list[list[int]], list[float]]:
    """Most likely word at every step until ``<end>`` or ``max_len`` steps; returns ids (without the end token) and
    each sequence's log-probability (end token included)."""
    decoder.eval()
    r_proj = decoder.project_r(r)

    def step(prev: torch.Tensor, state):
        logp, s1, s2 = decoder.step(prev, r_proj, *state)
        return logp, (s1, s2)

    return greedy_search(step, (None, None), r.shape[0], max_len=max_len, start=start, end=end, device=r.device)


def length_normaliser(length: int, alpha: float) -> float:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^α, as in the paper's code."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_decode(decoder: LRCN2f, r: torch.Tensor, *, beam_width: int, max_len: int, start: int, end: int,
                alpha: float = 0.7) -> tuple[list[list[int]], list[float]]:
    """Beam search, batched over inputs; finished hypotheses are ranked by log-probability / lp(|y|).

    At each step every live hypothesis is extended and the ``beam_width`` best extensions (by summed log-probability)
    are kept; an extension ending in ``<end>`` leaves the beam as a finished hypothesis and is not replaced, so the
    beam shrinks. The answer is the finished hypothesis with the best normalised score (or the best live one after
    ``max_len`` steps). With ``beam_width=1`` this is exactly greedy decoding.
    """
    decoder.eval()
    n, w = r.shape[0], int(beam_width)
    if n == 0:
        return [], []
    device = r.device
    r_proj = decoder.project_r(r).repeat_interleave(w, dim=0)         # (n·w) × H
    cum = torch.full((n, w), -math.inf, dtype=torch.float64, device=device)
    cum[:, 0] = 0.0                                                     # one live hypothesis to start
    seqs = torch.zeros((n, w, 0), dtype=torch.long, device=device)
    prev = torch.full((n * w,), start, dtype=torch.long, device=device)
    best_score = [-math.inf] * n
    best_seq: list[list[int]] = [[] for _ in range(n)]
    best_raw = [0.0] * n
    s1 = s2 = None
    base = (torch.arange(n, device=device) * w)[:, None]
    for t in range(max_len):
        logp, s1, s2 = decoder.step(prev, r_proj, s1, s2)
        v = logp.shape[1]
        cand = cum[:, :, None] + logp.view(n, w, v).double()           # dead hypotheses stay -inf
        top, flat = cand.view(n, w * v).topk(w, dim=1)
        parent, word = flat // v, flat % v
        seqs = torch.cat([torch.gather(seqs, 1, parent[:, :, None].expand(-1, -1, seqs.shape[2])),
                          word[:, :, None]], dim=2)
        alive = torch.isfinite(top)
        ended = alive & (word == end)
        for i, k in ended.nonzero().tolist():
            raw = float(top[i, k])
            norm = raw / length_normaliser(t + 1, alpha)
            if norm > best_score[i]:
                best_score[i], best_seq[i], best_raw[i] = norm, seqs[i, k, :-1].tolist(), raw
        cum = torch.where(alive & ~ended, top, torch.full_like(top, -math.inf))
        if not bool(torch.isfinite(cum).any()):
            break
        index = (base + parent).reshape(-1)
        s1 = tuple(s[:, index] for s in s1)
        s2 = tuple(s[:, index] for s in s2)
        prev = word.reshape(-1)
    for i in range(n):  # no finished hypothesis within max_len: the best live one
        if best_score[i] == -math.inf and torch.isfinite(cum[i]).any():
            k = int(cum[i].argmax())
            best_seq[i], best_raw[i] = seqs[i, k].tolist(), float(cum[i, k])
    return best_seq, best_raw
