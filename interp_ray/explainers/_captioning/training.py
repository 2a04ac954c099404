"""The captioning kit InterpNET and Dong et al.'s captioner share: reference sentences → padded token pairs, and one
epoch trainer that streams row batches into teacher-forced steps and keeps the best epoch.

Both methods learn from rows (an image or a clip, with K reference sentences) and train on *pairs*: every row once per
reference sentence (the paper replicates each image 10×). ``CaptionTrainer`` takes any iterable of row batches — a Ray
Train worker's shard of the store, or slices of an in-memory table — turns each batch into tensors with the method's
``prepare`` (its per-row inputs plus the batch's pairs), shuffles that batch's pairs and cuts them into optimiser steps
of ``batch_size`` pairs. Rows are shuffled across batches by the reader (Ray Data's local shuffle buffer). After the
epoch it evaluates ``loss`` over every validation pair in eval mode and keeps the weights of the best epoch by
``select`` (lower is better); optionally the learning rate halves after each epoch without improvement.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.text import Vocabulary
from interp_ray.training import ResumableTrainer

Batch = Mapping[str, Any]


def sentence_rows(column: Any, n: int) -> list[list[str]]:
    """A ``sentences`` column (N×K strings, or N lists) as N lists of non-blank sentences."""
    rows = list(column)
    if len(rows) != n:
        raise UserError(f"sentences column has {len(rows)} rows for {n} inputs")
    out = []
    for row in rows:
        items = [row] if isinstance(row, str) else list(row)
        out.append([str(s).strip() for s in items if str(s).strip()])
    return out


@dataclass
class PairArrays:
    """Training pairs: one row per (item, reference sentence). ``r`` has one row per item (InterpNET's r(x))."""

    r: np.ndarray            # items × R float32
    image: np.ndarray        # pairs, int64 index into the items
    tokens: np.ndarray       # pairs × (T + 1) int64: <start> w_1 … w_L <end> <pad> …
    lengths: np.ndarray      # pairs, int64: L + 1 (the words and the end token)
    truncated: int = 0       # sentences cut to max_len

    def __len__(self) -> int:
        return len(self.image)


def make_pairs(r: np.ndarray, sentences: Sequence[Sequence[str]], vocab: Vocabulary, max_len: int, *,
               allow_empty: bool = False) -> PairArrays:
    """Every item once per reference sentence, encoded and padded (``allow_empty``: a batch may hold none)."""
    image, encoded, truncated = [], [], 0
    for i, refs in enumerate(sentences):
        for s in refs:
            ids = vocab.encode(s)
            if not ids:
                continue
            if len(ids) > max_len - 1:
                ids, truncated = ids[:max_len - 1], truncated + 1
            image.append(i)
            encoded.append(ids)
    if not encoded and not allow_empty:
        raise UserError("no reference sentences to learn from (every sentence is blank)")
    width = max((len(e) for e in encoded), default=0) + 2
    tokens = np.full((len(encoded), width), vocab.pad, dtype=np.int64)
    tokens[:, 0] = vocab.start
    lengths = np.empty(len(encoded), dtype=np.int64)
    for j, ids in enumerate(encoded):
        tokens[j, 1:len(ids) + 1] = ids
        tokens[j, len(ids) + 1] = vocab.end
        lengths[j] = len(ids) + 1
    return PairArrays(np.ascontiguousarray(r, dtype=np.float32), np.asarray(image, dtype=np.int64), tokens, lengths,
                      truncated)


def pair_tokens(pairs: PairArrays, idx: np.ndarray | torch.Tensor, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """(input ids, target ids, lengths, item of each pair) for pair indices ``idx``, trimmed to the longest."""
    idx = np.asarray(idx, dtype=np.int64)
    lengths = pairs.lengths[idx]
    width = int(lengths.max())
    tok = torch.from_numpy(pairs.tokens[idx, :width + 1])
    return tok[:, :-1].to(device), tok[:, 1:].to(device), torch.from_numpy(lengths).to(device), pairs.image[idx]


@dataclass
class PairBatch:
    """One row batch made ready for steps: the method's per-row tensors and the batch's pairs."""

    rows: dict[str, torch.Tensor]
    pairs: PairArrays

    def __len__(self) -> int:
        return len(self.pairs)


def table_batches(columns: Mapping[str, Any], batch_rows: int, *, seed: int | None = None
                  ) -> Callable[[int], Iterable[dict[str, Any]]]:
    """For in-memory rows (a dict of N-row columns): a function of the epoch giving its row batches — shuffled per
    epoch with ``seed`` (as a shard reader's shuffle buffer would), in order when ``seed`` is None."""
    n = len(next(iter(columns.values())))

    def epoch_batches(epoch: int) -> Iterable[dict[str, Any]]:
        order = (np.arange(n) if seed is None
                 else np.random.default_rng([int(seed), int(epoch)]).permutation(n))
        for lo in range(0, n, batch_rows):
            idx = order[lo:lo + batch_rows]
            yield {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in columns.items()}

    return epoch_batches


def run_epochs(trainer: Any, rows: Callable[[int], Iterable[Batch]], val_rows: Callable[[int], Iterable[Batch]],
               epochs: int, history: Sequence[dict[str, Any]] = (),
               on_epoch: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Training in this process (a method's ``fit``, no Ray): ``epochs`` epochs of an epoch trainer over each epoch's
    row batches (``table_batches``); returns ``history`` with every epoch's metrics row appended (each also given to
    ``on_epoch`` as it finishes)."""
    history = list(history)
    for epoch in range(epochs):
        row = trainer.run_epoch(epoch, rows(epoch), val_rows(epoch))
        history.append(row)
        if on_epoch:
            on_epoch(row)
    return history


class CaptionTrainer(ResumableTrainer):
    """The epoch trainer of a captioning model (an ``EpochTrainer``; see the module docstring).

    ``module``: the model whose weights are trained and kept; ``model``: what runs the steps (``module`` or its DDP
    wrapper). ``prepare(batch) -> PairBatch``; ``loss(model, pair_batch, idx) -> {"loss": …, other metrics}`` for
    pair indices ``idx``. ``metrics``: the loss keys reported; ``select`` (one of them) picks the best epoch.
    """

    STATE_MODULE, STATE_KEPT = "module", ("lr", "best_value", "best_epoch", "best_state")

    def __init__(self, module: nn.Module, *, prepare: Callable[[Batch], PairBatch],
                 loss: Callable[[nn.Module, PairBatch, np.ndarray], dict[str, torch.Tensor]], epochs: int,
                 batch_size: int, lr: float, weight_decay: float = 0.0, grad_clip: float | None = None,
                 halve_on_plateau: bool = False, seed: int = 0, select: str = "loss",
                 metrics: Sequence[str] = ("loss",), model: nn.Module | None = None, eval_pairs: int = 1024):
        self.module, self.model = module, model if model is not None else module
        self.prepare, self.loss = prepare, loss
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.grad_clip, self.halve_on_plateau = grad_clip, halve_on_plateau
        self.metric, self.metrics, self.eval_pairs = select, tuple(metrics), int(eval_pairs)
        self.select = f"val_{select}"   # the metrics row's key that picks the best epoch
        self.lr = float(lr)
        self.opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=weight_decay)
        self.best_value, self.best_epoch = math.inf, -1
        self.best_state = copy.deepcopy(module.state_dict())

    def _uneven(self) -> contextlib.AbstractContextManager:
        """DDP ranks may get different numbers of steps (rows hold different numbers of sentences): join them."""
        join = getattr(self.model, "join", None)
        return join() if callable(join) and isinstance(self.model, nn.parallel.DistributedDataParallel) \
            else contextlib.nullcontext()

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.model.train()
        sums = dict.fromkeys(self.metrics, 0.0)
        seen = rows = 0
        with self._uneven():
            for batch in train:
                pb = self.prepare(batch)
                rows += len(next(iter(pb.rows.values()))) if pb.rows else 0
                order = torch.randperm(len(pb), generator=gen).numpy()
                for lo in range(0, len(order), self.batch_size):
                    idx = order[lo:lo + self.batch_size]
                    out = self.loss(self.model, pb, idx)
                    self.opt.zero_grad(set_to_none=True)
                    out["loss"].backward()
                    if self.grad_clip:
                        nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
                    self.opt.step()
                    for k in sums:
                        sums[k] += float(out[k].detach()) * len(idx)
                    seen += len(idx)
        val_metrics = self.evaluate(val)
        lr_used = self.lr
        value = val_metrics[self.metric]
        if value < self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = copy.deepcopy(self.module.state_dict())
        elif self.halve_on_plateau:
            self.lr /= 2
            for g in self.opt.param_groups:
                g["lr"] = self.lr
        return {"epoch": epoch, **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                **{f"val_{k}": val_metrics[k] for k in self.metrics}, "lr": lr_used, "best_epoch": self.best_epoch,
                f"best_val_{self.metric}": self.best_value, "pairs_seen": seen, "rows_seen": rows}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean per-pair losses over every pair of ``batches``, in eval mode (no dropout)."""
        self.module.eval()
        sums = dict.fromkeys(self.metrics, 0.0)
        n = 0
        for batch in batches:
            pb = self.prepare(batch)
            for lo in range(0, len(pb), self.eval_pairs):
                idx = np.arange(lo, min(lo + self.eval_pairs, len(pb)))
                out = self.loss(self.module, pb, idx)
                for k in sums:
                    sums[k] += float(out[k]) * len(idx)
                n += len(idx)
        return {k: v / max(n, 1) for k, v in sums.items()}

