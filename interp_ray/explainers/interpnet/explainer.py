"""InterpNET (Barratt, NIPS'17 Interpretable ML Symposium): a language model that reads the classifier's own layers.

The classifier (as in the paper: an MLP over frozen image features) is trained first and then frozen. Its
introspection vector r(x) = [h_0, h_1, …, h_K, p] — the input features, every hidden ReLU layer and the class
probabilities — is computed under ``torch.no_grad`` and detached (the paper's stop-gradient), so explainer training
cannot change the classifier. A two-layer LSTM (LRCN-2f) then learns to write the reference sentences:

    e_t = E[w_{t-1}]                     word embedding (uniform [-1, 1] init); w_0 = <start> (id 0)
    o¹_t = LSTM₁(e_t)                    dropout on the output (keep 0.8)
    u_t = W₁ [o¹_t ; r(x)] + b₁          r(x) enters the *second* layer (linear, no nonlinearity)
    o²_t = LSTM₂(u_t)                    dropout on the output
    logits_t = W₂ o²_t + b₂

Loss: per-sentence mean token cross-entropy (padding masked), averaged over the batch; every image appears once per
reference sentence. Adam, the best epoch by validation loss is kept, the learning rate halves after every epoch
without improvement (the paper's schedule). Decoding: greedy (the paper's evaluation) or beam search with the
length normalisation of the paper's code, ((5 + |y|) / 6)^α with α = 0.7.

Variants (``VARIANTS``; r(x) and the classifier's hidden sizes, from the paper's code):

    captioning    r = h_0            classifier: softmax regression on h_0 (only its accuracy is reported)
    interpnet_0   r = p              classifier: softmax regression on h_0 ("output only")
    interpnet_1   r = [h_0, h_1, p]  classifier: [500]
    interpnet_2   r = [h_0, h_1, h_2, p]  classifier: [500, 300]
    interpnet_3   r = [h_0 … h_3, p] classifier: [500, 300, 200] (not in the paper's code: a reconstruction)

Where the layers come from (``classifier``):

``head``   (default, the paper's setup) h_0 = one activation column of a frozen image model (e.g. a CNN layer,
           spatially averaged), standardised with training-set statistics; h_1..h_K and p come from an MLP head
           trained here on (h_0, label) — the paper's "classifier". Its weights are saved with the explainer.
``store``  the activation store's own model is the classifier: h_0 = ``feature_layer``, h_1.. = ``layers``,
           p = the ``probabilities`` column (e.g. the scenes CNN's taps: gap, relu_fc, softmax).

Data in: batch dicts of numpy arrays in the activation store's layout — ``id``, ``label``, one column per layer,
``probabilities``, ``prediction`` and, for training, ``sentences`` (N×K strings or lists; blanks are ignored).
``collect`` turns an iterable of such batches into an ``ActivationTable``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from interp_ray.config import LearnedJobConfig, Section, StoreSource
from interp_ray.errors import UserError
from interp_ray.explainers.base import Batch, EpochTrainer, Explainer, Explanation, Trainable, register
from interp_ray.explainers.captioning import (CaptionTrainer, PairArrays, PairBatch, make_pairs, pair_tokens,
                                              sentence_rows, table_batches)
from interp_ray.text import Vocabulary

KIND = "explainer"
METHOD = "interpnet"
VOCAB_FILE = "vocab.json"


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VariantSpec:
    hidden: tuple[int, ...]                       # the classifier head's hidden sizes (head mode)
    parts: Literal["input", "output", "all"]      # what r(x) holds: h_0 only, p only, or everything
    doc: str


VARIANTS: dict[str, VariantSpec] = {
    "captioning": VariantSpec((), "input", "captioning baseline: r = h_0 (input features only)"),
    "interpnet_0": VariantSpec((), "output", "InterpNET_0: r = p (output only)"),
    "interpnet_1": VariantSpec((500,), "all", "InterpNET_1: r = [h_0, h_1, p], hidden [500]"),
    "interpnet_2": VariantSpec((500, 300), "all", "InterpNET_2: r = [h_0, h_1, h_2, p], hidden [500, 300]"),
    "interpnet_3": VariantSpec((500, 300, 200), "all", "InterpNET_3: r = [h_0, …, h_3, p], hidden [500, 300, 200]"),
}
PAPER_EMBED_DIM, PAPER_HIDDEN_DIM = 256, 512


class InterpNETConfig(Section):
    """What the explainer is (saved in its checkpoint). Sizes default to the paper's."""

    variant: Literal["captioning", "interpnet_0", "interpnet_1", "interpnet_2", "interpnet_3"] = "interpnet_2"
    classifier: Literal["head", "store"] = "head"
    feature_layer: str = "gap"          # the activation column that is h_0
    feature_pool: Literal["mean", "flatten"] = "mean"   # how an N×C×H×W column becomes N×D
    hidden: list[int] | None = None     # head mode: override the variant's hidden sizes
    layers: list[str] = Field(default_factory=list)     # store mode: the hidden-layer columns h_1..h_K
    embed_dim: int = Field(PAPER_EMBED_DIM, gt=0)
    hidden_dim: int = Field(PAPER_HIDDEN_DIM, gt=0)     # both LSTMs and the projection W₁
    dropout: float = Field(0.2, ge=0, lt=1)             # the paper keeps 0.8
    max_len: int = Field(76, gt=1)                      # tokens generated at most (incl. the end token)
    min_count: int = Field(1, ge=1)                     # vocabulary: keep words seen this often (paper: all)
    length_penalty: float = Field(0.7, ge=0)            # beam search α

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(h <= 0 for h in v):
            raise ValueError("hidden sizes must be positive")
        return v

    @model_validator(mode="after")
    def _store_layers(self):
        if self.classifier == "head" and self.layers:
            raise ValueError("layers is for classifier=store; in head mode the hidden layers are the head's")
        return self

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def head_hidden(self) -> list[int]:
        return list(self.spec.hidden if self.hidden is None else self.hidden)

    def columns(self) -> list[str]:
        """Activation columns this explainer reads."""
        cols = [self.feature_layer]
        if self.classifier == "store":
            cols += [c for c in self.layers if c not in cols] + ["probabilities"]
        return cols


class ClassifierTrainConfig(Section):
    """The paper's classifier schedule: Adam, best epoch by validation accuracy, lr halved after a bad epoch."""

    epochs: int = Field(30, gt=0)       # paper: 100
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class DecoderTrainConfig(Section):
    """The paper's explainer schedule: Adam, best epoch by validation loss, lr halved after a bad epoch."""

    epochs: int = Field(10, gt=0)       # paper: 100
    batch_size: int = Field(32, gt=0)
    lr: float = Field(5e-4, gt=0)
    halve_on_plateau: bool = True
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    # Fault injection for tests and drills: rank 0 raises once at the start of this epoch (never after a restore).
    fail_at_epoch: int | None = Field(None, ge=0)


class EvaluateSection(Section):
    """``jobs.evaluate``: the paper's table over variants (each trained by ``jobs.train_explainer`` when missing)."""

    variants: list[str] = Field(default_factory=lambda: ["captioning", "interpnet_0", "interpnet_1", "interpnet_2",
                                                         "interpnet_3"])
    output_dir: str = "outputs/interpnet_table"   # <output_dir>/<variant>/ checkpoints, table.md, results.json
    trainer: Literal["ray", "local"] = "ray"      # how missing explainers are trained
    retrain: bool = False                         # train even when <output_dir>/<variant> exists
    beam_width: int = Field(1, ge=1)              # 1 = greedy (the paper's evaluation)
    samples: int = Field(8, ge=0)                 # example sentences per variant in the report
    meteor: bool = True


class InterpNETTrainJob(LearnedJobConfig):
    """``jobs.train_explainer`` for InterpNET (configs/interpnet_*.yaml): the store rows (activations + sentences),
    the explainer, the classifier head's schedule (head mode) and the explainer network's."""

    method: Literal["interpnet"] = "interpnet"
    source: StoreSource = Field(default_factory=lambda: StoreSource(
        rows={"train": 3000, "val": 600, "test": 1000}))
    explainer: InterpNETConfig = Field(default_factory=InterpNETConfig)
    classifier_train: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)
    train: DecoderTrainConfig = Field(default_factory=DecoderTrainConfig)
    output: str = "outputs/interpnet"
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)

    def store_layers(self) -> list[str]:
        """The layers to extract: ``source.layers``, else the explainer's columns (``probabilities`` is a store
        column of its own)."""
        return self.source.layers or [c for c in self.explainer.columns() if c != "probabilities"]


class InterpNETParams(BaseModel):
    """Per-request decoding settings."""

    model_config = ConfigDict(extra="forbid")

    beam_width: int = Field(1, ge=1, le=32, description="1 = greedy decoding (the paper's evaluation)")
    max_len: int | None = Field(None, ge=1, le=500, description="tokens at most; default: the trained max_len")


# ---------------------------------------------------------------------------------------------------------------
# Activation tables: what the explainer learns from
# ---------------------------------------------------------------------------------------------------------------

def pool_activation(arr: np.ndarray, how: str = "mean") -> np.ndarray:
    """One row per input, float32 N×D: conv maps (N×C×H×W…) are averaged over space (``mean``) or flattened."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim > 2:
        a = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2) if how == "mean" else a.reshape(a.shape[0], -1)
    return np.ascontiguousarray(a)


@dataclass
class ActivationTable:
    """Activation columns (pooled to N×D float32), labels, ids and reference sentences of one split, in memory."""

    ids: np.ndarray
    labels: np.ndarray
    columns: dict[str, np.ndarray]
    sentences: list[list[str]] | None = None
    prediction: np.ndarray | None = None   # the activation model's own prediction (store mode's classifier)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> "ActivationTable":
        idx = np.asarray(idx)
        return ActivationTable(self.ids[idx], self.labels[idx], {k: v[idx] for k, v in self.columns.items()},
                               None if self.sentences is None else [self.sentences[i] for i in idx],
                               None if self.prediction is None else self.prediction[idx])

    def all_sentences(self) -> list[str]:
        return [s for row in (self.sentences or []) for s in row]


def collect(batches: Iterable[Mapping[str, Any]] | Mapping[str, Any], columns: Sequence[str], *,
            pool: str = "mean", need_sentences: bool = False) -> ActivationTable:
    """Concatenate activation batches (dicts of arrays, e.g. from the activation store) into an ``ActivationTable``.

    Only ``columns`` (plus id, label, prediction, sentences) are kept, each pooled as it arrives, so a store with
    big conv maps never sits in memory whole.
    """
    if isinstance(batches, ActivationTable):
        return batches
    if isinstance(batches, Mapping):
        batches = [batches]
    ids, labels, preds, sents = [], [], [], []
    cols: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    seen = 0
    for b in batches:
        missing = [c for c in columns if c not in b]
        if missing:
            raise UserError(f"activation batch lacks column(s) {', '.join(missing)}; it has {', '.join(sorted(b))}")
        n = len(b[columns[0]])
        for c in columns:
            cols[c].append(pool_activation(b[c], pool) if c != "probabilities"
                           else np.asarray(b[c], dtype=np.float32))
        ids.append(np.asarray(b["id"]).astype(str) if "id" in b else np.arange(seen, seen + n).astype(str))
        seen += n
        labels.append(np.asarray(b["label"], dtype=np.int64) if "label" in b else np.full(n, -1, dtype=np.int64))
        if "prediction" in b:
            preds.append(np.asarray(b["prediction"], dtype=np.int64))
        if "sentences" in b:
            sents.extend(sentence_rows(b["sentences"], n))
        elif need_sentences:
            raise UserError("activation batch has no 'sentences' column: InterpNET learns from reference sentences")
    if not ids:
        raise UserError("no activation batches: the data is empty")
    n_rows = sum(len(i) for i in ids)
    return ActivationTable(
        ids=np.concatenate(ids), labels=np.concatenate(labels),
        columns={c: np.concatenate(v) for c, v in cols.items()},
        sentences=sents if len(sents) == n_rows else None,
        prediction=np.concatenate(preds) if len(preds) == len(ids) else None)


ROWS_PER_BATCH = 256   # rows per batch when training from an in-memory table (the job streams its own batches)


def table_columns(t: ActivationTable, columns: Sequence[str]) -> dict[str, Any]:
    """An ``ActivationTable`` as the row-batch columns the trainers read."""
    out: dict[str, Any] = {c: t.columns[c] for c in columns}
    out.update({"id": t.ids, "label": t.labels})
    if t.sentences is not None:
        out["sentences"] = list(t.sentences)
    return out


class FeatureStats:
    """Streaming statistics of the training rows: row count, widths of every column, the largest label, and h_0's
    mean and (unbiased) standard deviation, accumulated in float64 batch by batch."""

    def __init__(self):
        self.rows, self.max_label, self.dims = 0, -1, {}
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None

    def add(self, t: ActivationTable, feature: str) -> None:
        if not len(t):
            return
        dims = {c: int(v.shape[1]) for c, v in t.columns.items()}
        if self.dims and dims != self.dims:
            raise UserError(f"activation widths {dims} differ between batches ({self.dims})")
        self.dims = dims
        x = np.asarray(t.columns[feature], dtype=np.float64)
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)
        self.sumsq = (x * x).sum(0) if self.sumsq is None else self.sumsq + (x * x).sum(0)
        self.rows += len(x)
        self.max_label = max(self.max_label, int(np.max(t.labels)))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.rows
        var = np.maximum(self.sumsq - self.rows * mean * mean, 0.0) / max(self.rows - 1, 1)
        return (torch.as_tensor(mean, dtype=torch.float32),
                torch.as_tensor(np.sqrt(var), dtype=torch.float32).clamp_min(1e-6))


# ---------------------------------------------------------------------------------------------------------------
# The classifier head (the paper's MLP over features)
# ---------------------------------------------------------------------------------------------------------------

class FeatureMLP(nn.Module):
    """h_0 = standardised features; h_k = ReLU(W_k h_{k-1} + b_k); logits = W_o h_K + b_o ("normc" init as the
    paper's code: each unit's weight vector is Gaussian scaled to norm 1; hidden biases 0.1, logit bias 0)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], num_classes: int):
        super().__init__()
        self.in_dim, self.hidden, self.num_classes = int(in_dim), [int(h) for h in hidden], int(num_classes)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        dims = [self.in_dim, *self.hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], num_classes)
        with torch.no_grad():
            for lin, bias in [*((l, 0.1) for l in self.layers), (self.out, 0.0)]:
                w = torch.randn_like(lin.weight)
                lin.weight.copy_(w / w.norm(dim=1, keepdim=True))
                lin.bias.fill_(bias)

    def set_standardisation(self, features: np.ndarray) -> None:
        x = torch.as_tensor(features, dtype=torch.float32)
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[h_0, h_1, …, h_K, logits]."""
        h = self.standardise(x)
        outs = [h]
        for lin in self.layers:
            h = F.relu(lin(h))
            outs.append(h)
        outs.append(self.out(h))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_outputs(x)[-1]


class HeadTrainer:
    """Step 1 of Algorithm 1, streamed: the classifier head on (h_0, label) — Adam, the best epoch by validation
    accuracy, the lr halved after each epoch without improvement. ``features(batch) -> (x, y)`` tensors."""

    def __init__(self, head: FeatureMLP, features: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
                 settings: ClassifierTrainConfig, *, model: nn.Module | None = None):
        self.head, self.model = head, model if model is not None else head
        self.features, self.settings = features, settings
        self.lr = settings.lr
        self.opt = torch.optim.Adam(head.parameters(), lr=self.lr)
        self.best_acc, self.best_epoch = -1.0, -1
        self.best_state = copy.deepcopy(head.state_dict())

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + epoch)
        self.model.train()
        total, seen = 0.0, 0
        join = self.model.join() if isinstance(self.model, nn.parallel.DistributedDataParallel) else \
            contextlib.nullcontext()
        with join:
            for batch in train:
                x, y = self.features(batch)
                order = torch.randperm(len(x), generator=gen)
                for lo in range(0, len(x), self.settings.batch_size):
                    idx = order[lo:lo + self.settings.batch_size].to(x.device)
                    loss = F.cross_entropy(self.model(x[idx]), y[idx])
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    total += loss.item() * len(idx)
                    seen += len(idx)
        self.head.eval()
        correct = n = 0
        with torch.no_grad():
            for batch in val:
                x, y = self.features(batch)
                correct += int((self.head(x).argmax(1) == y).sum())
                n += len(y)
        val_acc = correct / n if n else 0.0
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best_state = val_acc, epoch, copy.deepcopy(self.head.state_dict())
        else:
            self.lr /= 2
            for g in self.opt.param_groups:
                g["lr"] = self.lr
        return {"epoch": epoch, "phase": "classifier", "train_loss": total / max(seen, 1), "val_accuracy": val_acc,
                "lr": self.lr, "rows_seen": seen}

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.opt.state_dict(), "lr": self.lr,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["optimizer"])
        self.lr = float(state["lr"])
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        self.best_acc, self.best_epoch, self.best_state = float(state["best_acc"]), int(state["best_epoch"]), \
            state["best_state"]


# ---------------------------------------------------------------------------------------------------------------
# The explainer network (LRCN-2f)
# ---------------------------------------------------------------------------------------------------------------

class LRCN2f(nn.Module):
    """Two-layer LSTM language model with the introspection vector entering the second layer (see module doc)."""

    def __init__(self, vocab_size: int, r_dim: int, *, embed_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.vocab_size, self.r_dim, self.hidden_dim = int(vocab_size), int(r_dim), int(hidden_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embed.weight, -1.0, 1.0)
        self.lstm1 = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.proj = nn.Linear(hidden_dim + r_dim, hidden_dim)   # W₁ [o¹ ; r] + b₁
        self.lstm2 = nn.LSTM(hidden_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.drop = nn.Dropout(dropout)

    def project_r(self, r: torch.Tensor) -> torch.Tensor:
        """The r-part of W₁ [o¹ ; r] + b₁ (computed once per sentence instead of once per word)."""
        return F.linear(r, self.proj.weight[:, self.hidden_dim:], self.proj.bias)

    def forward(self, tokens_in: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: B×T input ids and B×R vectors → B×T×V logits."""
        o1, _ = self.lstm1(self.embed(tokens_in))
        o1 = self.drop(o1)
        u = F.linear(o1, self.proj.weight[:, :self.hidden_dim]) + self.project_r(r)[:, None, :]
        o2, _ = self.lstm2(u)
        return self.out(self.drop(o2))

    def step(self, tokens: torch.Tensor, r_proj: torch.Tensor, state1, state2):
        """One decoding step for B sequences: previous ids (B,) → log-probabilities (B×V) and the new states."""
        o1, state1 = self.lstm1(self.embed(tokens)[:, None, :], state1)
        u = F.linear(o1[:, 0], self.proj.weight[:, :self.hidden_dim]) + r_proj
        o2, state2 = self.lstm2(u[:, None, :], state2)
        return F.log_softmax(self.out(o2[:, 0]), dim=-1), state1, state2


def sentence_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over sentences of each sentence's mean token cross-entropy (positions ≥ length are padding)."""
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    ce = ce.view(targets.shape)
    mask = torch.arange(targets.shape[1], device=targets.device)[None, :] < lengths[:, None]
    return ((ce * mask).sum(1) / lengths.clamp_min(1)).mean()


def _pair_loss(model: nn.Module, pb: PairBatch, idx: np.ndarray) -> dict[str, torch.Tensor]:
    r = pb.rows["r"]
    tin, tout, lengths, item = pair_tokens(pb.pairs, idx, r.device)
    return {"loss": sentence_loss(model(tin, r[torch.from_numpy(item).to(r.device)]), tout, lengths)}


class InterpNETTrainer:
    """Algorithm 1 as one epoch trainer: ``classifier_train.epochs`` epochs of the classifier head (head mode, unless
    it is trained already), then the head frozen at its best epoch and ``train.epochs`` epochs of the explainer
    network (``CaptionTrainer``) on r(x) computed from the frozen head batch by batch (stop-gradient: no gradient
    reaches the classifier). The best epoch is the explainer network's lowest validation loss."""

    select = "val_loss"

    def __init__(self, explainer: "InterpNET", classifier_train: ClassifierTrainConfig, train: DecoderTrainConfig,
                 *, device: torch.device | str = "cpu", wrap: Callable[[nn.Module], nn.Module] | None = None):
        wrap = wrap or (lambda m: m.to(device))
        self.explainer, self.device = explainer, torch.device(device)
        ex = explainer
        self.head_epochs = classifier_train.epochs if ex.head is not None and not ex.classifier_trained else 0
        self.epochs = self.head_epochs + train.epochs
        self.head = None
        if self.head_epochs:
            ex.head.requires_grad_(True)
            self.head = HeadTrainer(ex.head, ex.head_features, classifier_train, model=wrap(ex.head))
        elif ex.head is not None:
            ex.head.to(self.device)
        self.decoder = CaptionTrainer(
            ex.decoder, prepare=lambda b: ex.pair_batch(b, self.device), loss=_pair_loss, epochs=train.epochs,
            batch_size=train.batch_size, lr=train.lr, grad_clip=train.grad_clip,
            halve_on_plateau=train.halve_on_plateau, seed=train.seed, select="loss", model=wrap(ex.decoder))

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]:
        if epoch < self.head_epochs:
            return self.head.run_epoch(epoch, train, val)
        if not self.explainer.classifier_trained:
            self._freeze()
        row = self.decoder.run_epoch(epoch - self.head_epochs, train, val)
        return {**row, "epoch": epoch, "phase": "explainer", "best_epoch": row["best_epoch"] + self.head_epochs,
                "classifier_digest": state_digest(self.explainer.classifier_state())}

    def _freeze(self) -> None:
        if self.head is not None:
            self.explainer.head.load_state_dict(self.head.best_state)
        self.explainer.freeze_classifier()

    @property
    def best_state(self) -> dict[str, Any]:
        return {"classifier": self.explainer.classifier_state(), "decoder": self.decoder.best_state}

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict() if self.head is not None else None,
                "decoder": self.decoder.state_dict(), "classifier": self.explainer.classifier_state(),
                "frozen": self.explainer.classifier_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.head is not None and state["head"] is not None:
            self.head.load_state_dict(state["head"])
        self.explainer.load_classifier_state(state["classifier"])
        self.decoder.load_state_dict(state["decoder"])
        if state["frozen"]:
            self.explainer.freeze_classifier()


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy_decode(decoder: LRCN2f, r: torch.Tensor, *, max_len: int, start: int, end: int
                  ) -> tuple[list[list[int]], list[float]]:
    """Most likely word at every step until ``<end>`` or ``max_len`` steps; returns ids (without the end token) and
    each sequence's log-probability (end token included)."""
    decoder.eval()
    n = r.shape[0]
    if n == 0:
        return [], []
    r_proj = decoder.project_r(r)
    prev = torch.full((n,), start, dtype=torch.long, device=r.device)
    out = torch.full((n, max_len), end, dtype=torch.long)
    lengths = torch.full((n,), max_len, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    scores = torch.zeros(n, dtype=torch.float64)
    s1 = s2 = None
    for t in range(max_len):
        logp, s1, s2 = decoder.step(prev, r_proj, s1, s2)
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


# ---------------------------------------------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------------------------------------------

def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes: equal digests ⇔ bit-identical tensors."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


@register(METHOD)
class InterpNET(Explainer, Trainable):
    """InterpNET (Barratt 2017): sentences from the frozen classifier's introspection vector [h_0, …, h_K, p]."""

    name = METHOD
    needs = frozenset({"activations"})
    produces = frozenset({"sentence"})
    learned = True
    Params = InterpNETParams
    TrainJob = InterpNETTrainJob

    def __init__(self, config: InterpNETConfig | Mapping[str, Any] | None = None, *,
                 class_names: Sequence[str] | None = None, device: str | torch.device = "cpu"):
        if isinstance(config, InterpNETConfig):
            self.config = config
        else:
            from interp_ray.config import validate

            self.config = validate(InterpNETConfig, dict(config or {}), source="interpnet config")
        self.class_names = list(class_names) if class_names is not None else None
        self.device = torch.device(device)
        self.vocab: Vocabulary | None = None
        self.dims: dict[str, int] | None = None          # column -> width, fixed by the training data
        self.num_classes: int | None = None
        self.head: FeatureMLP | None = None
        self.norm_mean: torch.Tensor | None = None       # store mode: h_0 standardisation
        self.norm_std: torch.Tensor | None = None
        self.decoder: LRCN2f | None = None
        self.classifier_trained = False
        self.history: dict[str, list] = {"classifier": [], "explainer": []}
        self.info: dict[str, Any] = {}                   # provenance (source checkpoint, data) saved with it

    # -- set-up ----------------------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        return self.config.columns()

    def layers(self) -> list[str]:
        from interp_ray.activations import RESERVED_COLUMNS

        return [c for c in self.columns if c not in RESERVED_COLUMNS]

    def table(self, data: Any, *, need_sentences: bool = False) -> ActivationTable:
        return collect(data, self.columns, pool=self.config.feature_pool, need_sentences=need_sentences)

    def setup(self, train: ActivationTable, *, num_classes: int | None = None) -> "InterpNET":
        """Fix vocabulary, input widths, the (untrained) classifier head and the decoder from the training data."""
        if train.sentences is None:
            raise UserError("training data has no 'sentences' column: InterpNET learns from reference sentences")
        stats = FeatureStats()
        stats.add(train, self.config.feature_layer)
        return self._build(stats, train.all_sentences(), num_classes=num_classes)

    def _build(self, stats: "FeatureStats", sentences: Iterable[str], *, num_classes: int | None = None
               ) -> "InterpNET":
        """What ``setup`` fixes, from statistics of the training rows and their sentences (any iterable, consumed
        once) — so a streaming pass over the store gives the same explainer as an in-memory table."""
        cfg = self.config
        if self.vocab is None:
            self.vocab = Vocabulary.build(sentences, min_count=cfg.min_count)
        else:
            self.vocab.check_covers(list(sentences), source="the training data")
        if not stats.rows:
            raise UserError("no training rows: the data is empty")
        dims = stats.dims
        if self.dims is not None and dims != self.dims:
            raise UserError(f"activation widths {dims} differ from the explainer's {self.dims}")
        self.dims = dims
        if num_classes is None:
            if cfg.classifier == "store":
                num_classes = dims["probabilities"]
            elif self.class_names is not None:
                num_classes = len(self.class_names)
            else:
                num_classes = stats.max_label + 1
        self.num_classes = int(num_classes)
        mean, std = stats.mean_std()
        # Fixed initial weights (seeded here, without touching the caller's random state): the same data and config
        # always start from the same classifier and explainer, in any process.
        with torch.random.fork_rng(devices=[]):
            if cfg.classifier == "head" and self.head is None:
                torch.manual_seed(0)
                self.head = FeatureMLP(dims[cfg.feature_layer], cfg.head_hidden, self.num_classes)
                self.head.mean.copy_(mean)
                self.head.std.copy_(std)
            elif cfg.classifier == "store" and self.norm_mean is None:
                self.norm_mean, self.norm_std = mean, std
            if self.decoder is None:
                torch.manual_seed(1)
                self.decoder = LRCN2f(len(self.vocab), self.r_dim, embed_dim=cfg.embed_dim,
                                      hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
        return self

    @property
    def r_dim(self) -> int:
        cfg, d = self.config, self.dims
        h0 = d[cfg.feature_layer]
        if cfg.classifier == "head":
            hidden, p = sum(cfg.head_hidden), self.num_classes
        else:
            hidden, p = sum(d[c] for c in cfg.layers), d["probabilities"]
        return {"input": h0, "output": p, "all": h0 + hidden + p}[cfg.spec.parts]

    def _ready(self) -> None:
        if self.decoder is None or self.vocab is None:
            raise UserError("this InterpNET explainer is not trained: call fit() or load a checkpoint")

    # -- the classifier and r(x) -----------------------------------------------------------------------------

    def fit_classifier(self, train: Any, val: Any, settings: ClassifierTrainConfig | None = None) -> list[dict]:
        """Train the classifier head (head mode) on (h_0, label), then freeze it. Step 1 of the paper's Algorithm 1,
        in this process, with the same ``HeadTrainer`` a Ray Train worker runs."""
        if self.config.classifier != "head":
            return []
        train_t, val_t = self.table(train, need_sentences=self.vocab is None), self.table(val)
        if self.decoder is None:
            self.setup(train_t)
        settings = settings or ClassifierTrainConfig()
        self.head.requires_grad_(True)
        trainer = HeadTrainer(self.head, self.head_features, settings)
        rows = table_batches(table_columns(train_t, self.columns), ROWS_PER_BATCH, seed=settings.seed)
        val_rows = table_batches(table_columns(val_t, self.columns), ROWS_PER_BATCH)
        hist = [trainer.run_epoch(epoch, rows(epoch), val_rows(epoch)) for epoch in range(settings.epochs)]
        self.head.load_state_dict(trainer.best_state)
        self.freeze_classifier()
        self.history["classifier"] = hist
        return hist

    def freeze_classifier(self) -> None:
        if self.head is not None:
            self.head.requires_grad_(False)
            self.head.eval()
        self.classifier_trained = True

    def _check_widths(self, t: ActivationTable) -> None:
        for c in self.columns:
            got = int(t.columns[c].shape[1])
            if got != self.dims[c]:
                raise UserError(f"column {c!r} has {got} values per row; this explainer was trained on "
                                f"{self.dims[c]} (activations of a different model or layer)")

    @torch.no_grad()
    def introspect(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(r(x), p(x)) for every row: float32 N×R and N×classes, detached — the paper's stop-gradient."""
        t = self.table(data)
        self._check_widths(t)
        cfg = self.config
        h0_raw = torch.as_tensor(t.columns[cfg.feature_layer], dtype=torch.float32)
        if cfg.classifier == "head":
            if self.head is None:
                raise UserError("the classifier head is not built: call fit() or load a checkpoint")
            self.head.eval()
            h0_raw = h0_raw.to(self.head.mean.device)  # the head may sit on a worker's GPU
            outs = self.head.layer_outputs(h0_raw)
            h0, hidden, probs = outs[0], outs[1:-1], torch.softmax(outs[-1], dim=1)
        else:
            h0 = (h0_raw - self.norm_mean) / self.norm_std
            hidden = [torch.as_tensor(t.columns[c], dtype=torch.float32) for c in cfg.layers]
            probs = torch.as_tensor(t.columns["probabilities"], dtype=torch.float32)
        parts = {"input": [h0], "output": [probs], "all": [h0, *hidden, probs]}[cfg.spec.parts]
        return torch.cat(parts, dim=1).detach().cpu(), probs.detach().cpu()

    def predict(self, data: Any) -> np.ndarray:
        """The classifier's predicted class per row (head: the MLP; store: the activation model's argmax)."""
        return self.introspect(data)[1].argmax(1).numpy()

    # -- training ------------------------------------------------------------------------------------------

    def training_pairs(self, data: Any) -> PairArrays:
        t = self.table(data, need_sentences=True)
        r, _ = self.introspect(t)
        return make_pairs(r.numpy(), t.sentences, self.vocab, self.config.max_len)

    def head_features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_0, label) of a row batch on the head's device: what the classifier head trains on."""
        t = collect(batch, [self.config.feature_layer], pool=self.config.feature_pool)
        dev = self.head.mean.device
        return (torch.as_tensor(t.columns[self.config.feature_layer], dtype=torch.float32).to(dev),
                torch.as_tensor(t.labels, dtype=torch.int64).to(dev))

    def pair_batch(self, batch: Batch, device: torch.device | str = "cpu") -> PairBatch:
        """A row batch as the explainer network's training input: r(x) of each row (frozen, detached) and one pair
        per reference sentence."""
        t = self.table(batch, need_sentences=True)
        r, _ = self.introspect(t)
        pairs = make_pairs(np.zeros((len(t), 0), np.float32), t.sentences, self.vocab, self.config.max_len,
                           allow_empty=True)
        return PairBatch({"r": r.to(device)}, pairs)

    def fit(self, data: Any, val: Any = None, *, classifier_train: ClassifierTrainConfig | None = None,
            train: DecoderTrainConfig | None = None, on_epoch: Callable[[dict], None] | None = None) -> "InterpNET":
        """Algorithm 1 of the paper, in this process, with the trainer a Ray Train worker runs (``trainer``): train
        the classifier (unless already trained), freeze it, then the explainer network on every (image, reference
        sentence) pair; keeps the best epoch by val loss.

        ``data``/``val``: ActivationTables or iterables of activation batches. Without ``val``, every 10th training
        image is held out for model selection.
        """
        train_t = self.table(data, need_sentences=True)
        if val is None:
            hold = np.arange(len(train_t)) % 10 == 9
            train_t, val_t = train_t.subset(np.flatnonzero(~hold)), train_t.subset(np.flatnonzero(hold))
        else:
            val_t = self.table(val, need_sentences=True)
        self.setup(train_t)
        classifier_train, settings = classifier_train or ClassifierTrainConfig(), train or DecoderTrainConfig()
        torch.manual_seed(settings.seed)
        trainer = InterpNETTrainer(self, classifier_train, settings, device=self.device)
        rows = table_batches(table_columns(train_t, self.columns), ROWS_PER_BATCH, seed=settings.seed)
        val_rows = table_batches(table_columns(val_t, self.columns), ROWS_PER_BATCH)
        history = [*self.history["classifier"], *self.history["explainer"]]
        for epoch in range(trainer.epochs):
            row = trainer.run_epoch(epoch, rows(epoch), val_rows(epoch))
            history.append(row)
            if on_epoch:
                on_epoch(row)
        self.use_state(trainer.best_state, history)
        return self

    # -- the training protocol (interp_ray.explainers.base.Trainable; jobs/train_explainer.py) ------------------

    @classmethod
    def from_rows(cls, job: InterpNETTrainJob, rows: Callable[[], Iterable[Batch]], *,
                  class_names: Sequence[str] | None = None) -> "InterpNET":
        """One streaming pass over the training rows: the vocabulary (word counts), the activation widths and h_0's
        mean and standard deviation — nothing else of the rows is kept."""
        self = cls(job.explainer, class_names=class_names)
        stats = FeatureStats()

        def sentences() -> Iterable[str]:
            for batch in rows():
                t = self.table(batch, need_sentences=True)
                stats.add(t, self.config.feature_layer)
                yield from t.all_sentences()

        return self._build(stats, sentences())

    def train_columns(self) -> list[str]:
        return [*self.columns, "label", "sentences"]

    def trainer(self, job: InterpNETTrainJob, *, device: Any = "cpu",
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> EpochTrainer:
        return InterpNETTrainer(self, job.classifier_train, job.train, device=device, wrap=wrap)

    def use_state(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        self.load_classifier_state(state["classifier"])
        self.decoder.load_state_dict(state["decoder"])
        self.decoder.to(self.device).eval()
        if self.head is not None:
            self.head.to(self.device)
        self.freeze_classifier()
        self.history = {"classifier": [dict(h) for h in history if h.get("phase") == "classifier"],
                        "explainer": [dict(h) for h in history if h.get("phase") != "classifier"]}

    def load_classifier_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """The inverse of ``classifier_state``."""
        if self.head is not None:
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        elif "norm.mean" in state:
            self.norm_mean, self.norm_std = state["norm.mean"], state["norm.std"]

    # -- explaining ----------------------------------------------------------------------------------------

    def generate(self, r: torch.Tensor, *, beam_width: int = 1, max_len: int | None = None
                 ) -> tuple[list[str], list[float]]:
        """Sentences for introspection vectors ``r`` (N×R): greedy when ``beam_width`` is 1, else beam search."""
        self._ready()
        max_len = max_len or self.config.max_len
        self.decoder.to(self.device)
        r = r.to(self.device)
        if beam_width == 1:
            ids, scores = greedy_decode(self.decoder, r, max_len=max_len, start=self.vocab.start, end=self.vocab.end)
        else:
            ids, scores = beam_decode(self.decoder, r, beam_width=beam_width, max_len=max_len,
                                      start=self.vocab.start, end=self.vocab.end, alpha=self.config.length_penalty)
        return [self.vocab.decode(s) for s in ids], scores

    def explain(self, batch: Mapping[str, Any], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        self._ready()
        r, probs = self.introspect(batch)
        sentences, scores = self.generate(r, beam_width=p.beam_width, max_len=p.max_len)
        preds = probs.argmax(1).tolist()
        return [Explanation(label=int(c), label_name=self.class_names[c] if self.class_names else None,
                            method=self.name, sentence=s,
                            extra={"variant": self.config.variant, "probability": float(probs[i, c]),
                                   "log_prob": float(sc)})
                for i, (c, s, sc) in enumerate(zip(preds, sentences, scores))]

    # -- checkpoints -----------------------------------------------------------------------------------------

    def classifier_state(self) -> dict[str, torch.Tensor]:
        if self.head is not None:
            return {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.norm_mean is not None:
            return {"norm.mean": self.norm_mean, "norm.std": self.norm_std}
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._ready()
        return {**self.classifier_state(), **{f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"explainer": METHOD, "interpnet": self.config.model_dump(), "class_names": self.class_names,
                "dims": self.dims, "num_classes": self.num_classes, "r_dim": self.r_dim,
                "vocab_size": len(self.vocab), "vocab_digest": self.vocab.digest,
                "classifier_trained": self.classifier_trained, "classifier_digest": state_digest(self.classifier_state()),
                "history": self.history, "info": self.info}

    def save(self, path: str) -> str:
        from interp_ray.checkpoint import save_checkpoint

        self._ready()
        return save_checkpoint(path, kind=KIND, config=self.checkpoint_config(), state_dict=self.state_dict(),
                               files={VOCAB_FILE: self.vocab.to_json().encode()})

    @classmethod
    def load(cls, path: str, *, device: str | torch.device = "cpu", **_: Any) -> "InterpNET":
        from interp_ray.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path, kind=KIND)
        cfg = ckpt.config
        if cfg.get("explainer") != METHOD:
            raise UserError(f"checkpoint {path} holds a {cfg.get('explainer')!r} explainer, not {METHOD!r}")
        if VOCAB_FILE not in ckpt.files:
            raise UserError(f"checkpoint {path} has no {VOCAB_FILE}: cannot map token ids to words")
        self = cls(cfg["interpnet"], class_names=cfg.get("class_names"), device=device)
        self.vocab = Vocabulary.from_json(ckpt.files[VOCAB_FILE], source=f"{path}/{VOCAB_FILE}")
        self.dims, self.num_classes = {k: int(v) for k, v in cfg["dims"].items()}, int(cfg["num_classes"])
        self.history, self.info = cfg.get("history", self.history), cfg.get("info", {})
        state = ckpt.state_dict
        emb = state.get("decoder.embed.weight")
        if emb is None or emb.shape[0] != len(self.vocab) or state["decoder.out.weight"].shape[0] != len(self.vocab):
            rows = None if emb is None else emb.shape[0]
            raise UserError(f"vocabulary mismatch in {path}: {VOCAB_FILE} lists {len(self.vocab)} tokens but the "
                            f"weights were trained with {rows}")
        if self.vocab.digest != cfg.get("vocab_digest"):
            raise UserError(f"vocabulary mismatch in {path}: {VOCAB_FILE} is not the vocabulary the weights were "
                            "trained with (its digest differs from config.json's)")
        c = self.config
        if c.classifier == "head":
            self.head = FeatureMLP(self.dims[c.feature_layer], c.head_hidden, self.num_classes)
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        else:
            self.norm_mean, self.norm_std = state["norm.mean"], state["norm.std"]
        self.decoder = LRCN2f(len(self.vocab), self.r_dim, embed_dim=c.embed_dim, hidden_dim=c.hidden_dim,
                              dropout=c.dropout)
        try:
            self.decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
        except RuntimeError as e:
            raise UserError(f"checkpoint {path}: weights do not fit the configured explainer "
                            f"({str(e).splitlines()[0]})") from None
        self.classifier_trained = bool(cfg.get("classifier_trained", True))
        if self.classifier_trained:  # a run's starting point holds an untrained head: its first phase trains it
            self.freeze_classifier()
        elif self.head is not None:
            self.head.eval()
        self.decoder.to(self.device).eval()
        return self
