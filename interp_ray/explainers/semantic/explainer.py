"""Dong et al. (CVPR 2017), "Improving Interpretability of DNNs with Semantic Information": a video captioner whose
pooled features are trained to predict the videos' latent topics, neuron labels by prediction-difference
maximisation, and human-in-the-loop caption revision through those labels.

The captioner (spec ../shared/PAPERS.md §2; the released Theano code's architecture, sizes scaled down):

    c_1..c_K                     frame features from a pre-trained CNN (zero rows past a video's end, ``mask``)
    h→_i, h←_i = biLSTM(c)       packed by length, so the backward pass starts at the last *real* frame
    v_i = [c_i ; h→_i ; h←_i]    per-frame context
    v̄ = Σ_i m_i v_i / Σ_i m_i    masked mean (padding never counts)
    a = ReLU(W_t v̄ + b_t)        the interpretable layer ("neurons" below are its units)
    ŝ = W_a dropout(a) + b_a     topic prediction; L_I = ||ŝ − s||² (summed over topics)
    decoder                      Yao et al.'s soft-attention LSTM: init (h_0, c_0) = tanh(W g), attention α_t over the
                                 memory, a selector gate β_t = σ(w·h_{t−1}), deep output
                                 logits_t = W_o tanh(E w_{t−1} + W_h h_t + W_c ctx_t)
    loss                         Σ_t −log p(w_t) + λ·L_I + γ·Σ_i (1 − Σ_t α_{t,i})² per sentence, mean over the batch

What the decoder reads (``decoder_reads``) — the paper is silent, the spec notes the released code's choice:

``v``  (the released code) memory = v_i, g = v̄; the interpretable layer is a side head only, so L_I shapes the
       encoder but editing ``a`` cannot change a caption (revision raises a UserError).
``a``  (default here) the interpretable layer is the decoder's only view of the video: memory = the per-frame
       interpretable activations a_i = ReLU(W_t v_i + b_t) (the same units applied to each frame), g = a. Editing
       neuron d edits a_d and every a_{i,d}, so suppressing/boosting labelled neurons changes what is decoded — which
       the human-in-the-loop procedure needs. L_I still acts on a = ReLU(W_t v̄ + b_t) exactly as in the paper.

Neuron labels (spec step 6, a reconstruction): for neuron d, V_d = the ``top_n`` items with the largest a_d;
PD(d, k) = mean_{v ∈ V_d} [f(ŝ_k(v)) − f(ŝ_k(v | a_d ← r))] with f = identity (``diff``) or log of the clamped value
(``log``) and r = 0 (``zero``) or the mean of a_d over all items (``mean``). Word scores are PD(d, ·) @ φ (φ = the
topic–word table), restricted to a concept vocabulary when one is given. The label is the argmax; it is *confident*
when the top score is positive and beats the runner-up by ``margin`` (relative): (top − second) / top ≥ margin.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from interp_ray.config import LearnedJobConfig, Section, StoreSource
from interp_ray.errors import UserError
from interp_ray.explainers.base import Batch, EpochTrainer, Explainer, Explanation, Trainable, register
from interp_ray.explainers.captioning import CaptionTrainer, PairBatch, make_pairs, pair_tokens, sentence_rows
from interp_ray.text import Vocabulary
from interp_ray.topics import TopicConfig

KIND = "explainer"
METHOD = "semantic"
VOCAB_FILE = "vocab.json"
TOPICS_FILE = "topics.json"
NEURONS_FILE = "neurons.json"
PAPER_ATTENTION_PENALTY = 0.70602


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------

class SemanticConfig(Section):
    """What the captioner is (saved in its checkpoint). Paper sizes in comments; defaults are scaled for scenes."""

    enc_hidden: int = Field(64, gt=0)            # paper: 256 per direction
    interp_dim: int = Field(64, gt=0)            # neurons of the interpretable layer a (paper: 1536 = |v̄|)
    word_dim: int = Field(64, gt=0)              # paper: 468
    dec_hidden: int = Field(128, gt=0)           # paper: 3518
    att_dim: int = Field(64, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    selector: bool = True
    decoder_reads: Literal["v", "a"] = "a"       # see the module docstring
    interp_weight: float = Field(0.1, ge=0)      # λ
    attention_penalty: float = Field(PAPER_ATTENTION_PENALTY, ge=0)  # γ, the doubly-stochastic penalty
    max_len: int = Field(30, gt=1)               # tokens generated at most (incl. <end>)
    min_count: int = Field(1, ge=1)


class SemanticTrainConfig(Section):
    """Adam (the paper: Adadelta), gradient-norm clip 10 and weight decay 1e-4 as the paper; best epoch by val NLL."""

    epochs: int = Field(10, gt=0)                # paper: 30
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    seed: int = 0
    # Fault injection for tests and drills: rank 0 raises once at the start of this epoch (never after a restore).
    fail_at_epoch: int | None = Field(None, ge=0)


class LabelConfig(Section):
    """Prediction-difference labelling (module docstring)."""

    top_n: int = Field(20, gt=0)                 # |V_d|
    form: Literal["diff", "log"] = "diff"
    replace: Literal["zero", "mean"] = "zero"
    level: Literal["word", "topic"] = "word"
    margin: float = Field(0.2, ge=0)             # relative margin of a confident label
    top_words: int = Field(4, ge=1)              # also keep each neuron's top-m words with a positive score
    concepts: list[str] | None = None            # word level: only these words can be labels (None: all words)
    eps: float = Field(1e-3, gt=0)               # log form: ŝ is clamped to at least eps


class SemanticTrainJob(LearnedJobConfig):
    """``jobs.train_explainer`` for the Dong et al. captioner (configs/semantic_*.yaml). The rows are clips: the
    frame CNN's ``source.layers[0]`` on every frame, one store row per clip (``data.name: scene_clips``), with the
    clips' reference sentences (and the scenes' attributes, for the evaluation) kept beside them."""

    method: Literal["semantic"] = "semantic"
    source: StoreSource = Field(default_factory=lambda: StoreSource(
        data={"name": "scene_clips", "options": {"frames": 8}}, layers=["gap"], keep=["sentences", "attributes"],
        rows={"train": 1200, "val": 240, "test": 240}))
    topics: TopicConfig = Field(default_factory=TopicConfig)
    explainer: SemanticConfig = Field(default_factory=SemanticConfig)
    train: SemanticTrainConfig = Field(default_factory=SemanticTrainConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    output: str = "outputs/semantic"

    @property
    def frame_column(self) -> str:
        return (self.source.layers or ["gap"])[0]


class SemanticParams(BaseModel):
    """Per-request settings: decoding, how many neurons to report, and optional edits (revision)."""

    model_config = ConfigDict(extra="forbid")

    max_len: int | None = Field(None, ge=1, le=200)
    top_neurons: int = Field(5, ge=0, le=100)
    suppress: list[str] = Field(default_factory=list, description="neuron ids or label words to set to 0")
    boost: list[str] = Field(default_factory=list, description="neuron ids or label words to set to their "
                                                               "typical top activation")
    match: Literal["label", "words"] = Field("label", description="a word selects neurons by their label or by "
                                                                  "their top-m words")


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class NeuronEdit:
    """Edits of the interpretable layer: ``suppress`` → 0, ``boost`` → the given value (in a and every a_i)."""

    suppress: list[int] = field(default_factory=list)
    boost: dict[int, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.suppress or self.boost)

    def apply(self, a: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``a`` (… × D) with the edited units replaced; padded frames (``frame_mask`` False) stay zero."""
        if not self:
            return a
        a = a.clone()
        if self.suppress:
            a[..., list(self.suppress)] = 0.0
        for d, value in self.boost.items():
            a[..., int(d)] = float(value)
        if frame_mask is not None:
            a = a * frame_mask[..., None].to(a.dtype)
        return a


@dataclass
class Encoded:
    v: torch.Tensor           # B × K × C per-frame context
    mask: torch.Tensor        # B × K bool
    vbar: torch.Tensor        # B × C
    a: torch.Tensor           # B × D interpretable layer
    s_hat: torch.Tensor       # B × T topic prediction
    memory: torch.Tensor      # B × K × M what the decoder attends over
    init: torch.Tensor        # B × M what initialises the decoder


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B × K × C) over the frames where mask (B × K) is True."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class SemanticCaptioner(nn.Module):
    """Bi-LSTM encoder, interpretable side head and attention LSTM decoder (module docstring)."""

    def __init__(self, frame_dim: int, vocab_size: int, num_topics: int, cfg: SemanticConfig):
        super().__init__()
        self.cfg = cfg
        self.frame_dim, self.vocab_size, self.num_topics = int(frame_dim), int(vocab_size), int(num_topics)
        self.encoder = nn.LSTM(frame_dim, cfg.enc_hidden, batch_first=True, bidirectional=True)
        self.ctx_dim = frame_dim + 2 * cfg.enc_hidden
        self.interp = nn.Linear(self.ctx_dim, cfg.interp_dim)          # W_t, b_t
        self.topic = nn.Linear(cfg.interp_dim, num_topics)             # W_a, b_a
        self.drop = nn.Dropout(cfg.dropout)
        mem = self.ctx_dim if cfg.decoder_reads == "v" else cfg.interp_dim
        self.mem_dim = mem
        self.init_h = nn.Linear(mem, cfg.dec_hidden)
        self.init_c = nn.Linear(mem, cfg.dec_hidden)
        self.embed = nn.Embedding(vocab_size, cfg.word_dim)
        self.att_mem = nn.Linear(mem, cfg.att_dim)
        self.att_h = nn.Linear(cfg.dec_hidden, cfg.att_dim, bias=False)
        self.att_v = nn.Linear(cfg.att_dim, 1)
        self.selector = nn.Linear(cfg.dec_hidden, 1) if cfg.selector else None
        self.cell = nn.LSTMCell(cfg.word_dim + mem, cfg.dec_hidden)
        self.out_h = nn.Linear(cfg.dec_hidden, cfg.word_dim)           # deep output: h → word space
        self.out_ctx = nn.Linear(mem, cfg.word_dim, bias=False)        # ctx2out
        self.out = nn.Linear(cfg.word_dim, vocab_size)

    # -- encoder ---------------------------------------------------------------------------------------------

    def context(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """v_i = [c_i ; h→_i ; h←_i] (B × K × C), zero on padded frames."""
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(feats, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=feats.shape[1])
        return torch.cat([feats, h], dim=2) * mask[..., None].to(feats.dtype)

    def encode(self, feats: torch.Tensor, mask: torch.Tensor, edit: NeuronEdit | None = None) -> Encoded:
        mask = mask.bool()
        v = self.context(feats, mask)
        vbar = masked_mean(v, mask)
        a = F.relu(self.interp(vbar))
        if edit:
            a = edit.apply(a)
        s_hat = self.topic(self.drop(a))
        if self.cfg.decoder_reads == "v":
            memory, init = v, vbar
        else:
            a_frames = F.relu(self.interp(v)) * mask[..., None].to(v.dtype)
            if edit:
                a_frames = edit.apply(a_frames, mask)
            memory, init = a_frames, a
        return Encoded(v, mask, vbar, a, s_hat, memory, init)

    # -- decoder ---------------------------------------------------------------------------------------------

    def init_state(self, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_0, c_0, precomputed attention keys)."""
        g = self.drop(enc.init)
        return torch.tanh(self.init_h(g)), torch.tanh(self.init_c(g)), self.att_mem(enc.memory)

    def step(self, prev: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor,
             enc: Encoded) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One word: previous ids (B,) → logits (B × V), new (h, c), attention weights (B × K)."""
        h, c = state
        e = self.embed(prev)
        scores = self.att_v(torch.tanh(keys + self.att_h(h)[:, None, :]))[..., 0]
        scores = scores.masked_fill(~enc.mask, -1e9)
        alpha = torch.softmax(scores, dim=1)
        ctx = (alpha[..., None] * enc.memory).sum(1)
        if self.selector is not None:
            ctx = torch.sigmoid(self.selector(h)) * ctx
        h, c = self.cell(torch.cat([e, ctx], dim=1), (h, c))
        logits = self.out(self.drop(torch.tanh(e + self.out_h(h) + self.out_ctx(ctx))))
        return logits, (h, c), alpha

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, tokens_in: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing: logits (B × T × V), attention (B × T × K) and ŝ (B × topics)."""
        enc = self.encode(feats, mask)
        h, c, keys = self.init_state(enc)
        logits, alphas = [], []
        for t in range(tokens_in.shape[1]):
            lg, (h, c), al = self.step(tokens_in[:, t], (h, c), keys, enc)
            logits.append(lg)
            alphas.append(al)
        return torch.stack(logits, 1), torch.stack(alphas, 1), enc.s_hat


def caption_losses(logits: torch.Tensor, alphas: torch.Tensor, s_hat: torch.Tensor, targets: torch.Tensor,
                   lengths: torch.Tensor, topics: torch.Tensor, frame_mask: torch.Tensor, cfg: SemanticConfig
                   ) -> dict[str, torch.Tensor]:
    """The paper's objective per sentence, averaged over the batch: summed NLL + λ·L_I + γ·attention penalty."""
    steps = torch.arange(targets.shape[1], device=targets.device)[None, :] < lengths[:, None]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = (ce.view(targets.shape) * steps).sum(1).mean()
    interp = ((s_hat - topics) ** 2).sum(1).mean()
    attention_mass = (alphas * steps[..., None].to(alphas.dtype)).sum(1)            # B × K
    penalty = (((1.0 - attention_mass) ** 2) * frame_mask.to(alphas.dtype)).sum(1).mean()
    total = nll + cfg.interp_weight * interp + cfg.attention_penalty * penalty
    return {"loss": total, "nll": nll, "interp": interp, "attention": penalty,
            "tokens": steps.sum().to(nll.dtype) / max(targets.shape[0], 1)}


# ---------------------------------------------------------------------------------------------------------------
# Training data: items (frame features, mask, topics) and (item, sentence) pairs
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class CaptionData:
    """Arrays a trainer needs (picklable, for the object store): one row per item, one per (item, sentence)."""

    features: np.ndarray     # N × K × D float32
    mask: np.ndarray         # N × K bool
    topics: np.ndarray       # N × T float32
    item: np.ndarray         # P int64: the item of each pair
    tokens: np.ndarray       # P × (L + 2) int64: <start> w… <end> <pad>…
    lengths: np.ndarray      # P int64: words + <end>

    def __len__(self) -> int:
        return len(self.item)


def make_caption_data(features: np.ndarray, mask: np.ndarray, topics: np.ndarray,
                      sentences: Sequence[Sequence[str]], vocab: Vocabulary, max_len: int) -> CaptionData:
    pairs = make_pairs(np.zeros((len(sentences), 1), np.float32), sentences, vocab, max_len)
    return CaptionData(np.ascontiguousarray(features, dtype=np.float32), np.asarray(mask, dtype=bool),
                       np.asarray(topics, dtype=np.float32), pairs.image, pairs.tokens, pairs.lengths)


def batch_tensors(data: CaptionData, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    lengths = data.lengths[idx]
    width = int(lengths.max())
    tok = torch.from_numpy(data.tokens[idx, :width + 1])
    item = data.item[idx]
    return {"feats": torch.from_numpy(data.features[item]).to(device),
            "mask": torch.from_numpy(data.mask[item]).to(device),
            "topics": torch.from_numpy(data.topics[item]).to(device),
            "tin": tok[:, :-1].to(device), "tout": tok[:, 1:].to(device),
            "lengths": torch.from_numpy(lengths).to(device)}


def batch_losses(model: nn.Module, b: Mapping[str, torch.Tensor], cfg: SemanticConfig) -> dict[str, torch.Tensor]:
    logits, alphas, s_hat = model(b["feats"], b["mask"], b["tin"])
    return caption_losses(logits, alphas, s_hat, b["tout"], b["lengths"], b["topics"], b["mask"], cfg)


def frame_features(column: Any) -> np.ndarray:
    """A store's per-clip frame column (N × K × C × …, one layer of every frame) as N × K × C frame features: any
    spatial axes averaged, as the paper pools GoogLeNet's last conv block."""
    a = np.asarray(column, dtype=np.float32)
    if a.ndim < 3:
        raise UserError(f"frame features must be N × K × D (or N × K × C × H × W), got shape {a.shape}")
    return a.reshape(*a.shape[:3], -1).mean(3) if a.ndim > 3 else a


def _pair_losses(model: nn.Module, pb: PairBatch, idx: np.ndarray) -> dict[str, torch.Tensor]:
    feats = pb.rows["feats"]
    tin, tout, lengths, item = pair_tokens(pb.pairs, idx, feats.device)
    item = torch.from_numpy(item).to(feats.device)
    b = {"feats": feats[item], "mask": pb.rows["mask"][item], "topics": pb.rows["topics"][item], "tin": tin,
         "tout": tout, "lengths": lengths}
    cfg = model.module.cfg if isinstance(model, nn.parallel.DistributedDataParallel) else model.cfg
    return batch_losses(model, b, cfg)


LOSS_METRICS = ("loss", "nll", "interp", "attention")


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy_decode(model: SemanticCaptioner, feats: torch.Tensor, mask: torch.Tensor, *, max_len: int, start: int,
                  end: int, edit: NeuronEdit | None = None) -> tuple[list[list[int]], Encoded]:
    """The most likely word at each step until ``<end>``; ids without the end token, and the (edited) encoding."""
    model.eval()
    enc = model.encode(feats, mask, edit)
    n = feats.shape[0]
    h, c, keys = model.init_state(enc)
    prev = torch.full((n,), start, dtype=torch.long)
    out = torch.full((n, max_len), end, dtype=torch.long)
    lengths = torch.full((n,), max_len, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(max_len):
        logits, (h, c), _ = model.step(prev, (h, c), keys, enc)
        word = logits.argmax(1)
        out[:, t] = word
        finished = ~done & (word == end)
        lengths[finished] = t
        done |= finished
        if bool(done.all()):
            break
        prev = word
    return [out[i, :lengths[i]].tolist() for i in range(n)], enc


# ---------------------------------------------------------------------------------------------------------------
# Neuron labels by prediction difference
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class NeuronLabel:
    neuron: int
    label: str | None          # a word (level=word) or "topic <k>" (level=topic); None for a dead neuron
    topic: int | None          # the topic with the largest PD
    topic_words: list[str]     # that topic's top words
    score: float               # the label's PD score
    margin: float              # (top − second) / top
    confident: bool
    top_items: list[int]       # indices of V_d
    typical: float             # mean a_d over V_d: the value "boost" sets
    words: list[str] = field(default_factory=list)   # the top-m words (or topics) with a positive score


@torch.no_grad()
def prediction_difference(head: nn.Linear, acts: np.ndarray | torch.Tensor, *, top_n: int = 20,
                          form: str = "diff", replace: str = "zero", eps: float = 1e-3
                          ) -> tuple[np.ndarray, list[np.ndarray]]:
    """PD (D × T) of every neuron of ``acts`` (N × D, the interpretable layer) for every topic of ``head``, and V_d.

    For neuron d, over its ``top_n`` most activating items (those with a_d > 0): the mean of f(ŝ_k(a)) − f(ŝ_k(a'))
    where a' is a with a_d replaced by 0 or by its mean over all items. A neuron that never fires gets PD 0.
    """
    a = torch.as_tensor(acts, dtype=torch.float32)
    n, dims = a.shape
    ref = torch.zeros(dims) if replace == "zero" else a.mean(0)
    f = (lambda s: s) if form == "diff" else (lambda s: torch.log(s.clamp_min(eps)))
    pd = np.zeros((dims, head.out_features), dtype=np.float64)
    tops: list[np.ndarray] = []
    for d in range(dims):
        order = torch.argsort(a[:, d], descending=True, stable=True)[:top_n]
        order = order[a[order, d] > 0]
        tops.append(order.numpy())
        if len(order) == 0:
            continue
        base = a[order]
        changed = base.clone()
        changed[:, d] = ref[d]
        pd[d] = (f(head(base)) - f(head(changed))).mean(0).double().numpy()
    return pd, tops


def label_neurons(pd: np.ndarray, tops: Sequence[np.ndarray], acts: np.ndarray, topic_word: np.ndarray,
                  vocabulary: Sequence[str], cfg: LabelConfig, top_words: Sequence[Sequence[str]] | None = None
                  ) -> list[NeuronLabel]:
    """One label per neuron from its PD row: a word (PD @ φ, restricted to ``cfg.concepts``) or a topic."""
    vocabulary = list(vocabulary)
    if cfg.level == "word":
        scores_all = pd @ np.asarray(topic_word, dtype=np.float64)          # D × V
        cols = list(range(len(vocabulary))) if cfg.concepts is None else \
            [vocabulary.index(w) for w in cfg.concepts if w in vocabulary]
        if not cols:
            raise UserError("none of the concept words is in the topic vocabulary")
        names = [vocabulary[j] for j in cols]
        scores = scores_all[:, cols]
    else:
        scores, names = pd, [f"topic {k}" for k in range(pd.shape[1])]
    labels = []
    acts = np.asarray(acts)
    for d in range(pd.shape[0]):
        top_items = [int(i) for i in tops[d]]
        best_topic = int(np.argmax(pd[d])) if top_items else None
        words = list(top_words[best_topic]) if (top_words is not None and best_topic is not None) else []
        if not top_items:
            labels.append(NeuronLabel(d, None, None, [], 0.0, 0.0, False, [], 0.0))
            continue
        order = np.argsort(-scores[d], kind="stable")
        top = float(scores[d, order[0]])
        second = float(scores[d, order[1]]) if len(order) > 1 else 0.0
        margin = (top - second) / top if top > 0 else 0.0
        top_m = [names[j] for j in order[:cfg.top_words] if scores[d, j] > 0]
        labels.append(NeuronLabel(d, names[order[0]], best_topic, words, top, margin,
                                  bool(top > 0 and margin >= cfg.margin), top_items,
                                  float(acts[top_items, d].mean()), top_m))
    return labels


ATTRIBUTE_CONCEPTS = "attributes"   # labels.concepts shorthand: the scenes' attribute words


def label_config(cfg: LabelConfig) -> LabelConfig:
    """``labels.concepts: [attributes]`` expands to the scenes' attribute words."""
    if cfg.concepts == [ATTRIBUTE_CONCEPTS]:
        from interp_ray.data.scenes import ATTRIBUTE_VOCAB

        return cfg.model_copy(update={"concepts": list(ATTRIBUTE_VOCAB)})
    return cfg


def fit_topic_head(head: nn.Linear, acts: np.ndarray, topics: np.ndarray, *, ridge: float = 1e-3) -> None:
    """Refit W_a, b_a by ridge regression of the topics on frozen activations (for a λ = 0 model, whose head got no
    gradient: labelling it with its random initial head would measure the initialisation, not the features)."""
    x = np.concatenate([np.asarray(acts, np.float64), np.ones((len(acts), 1))], axis=1)
    reg = ridge * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(x.T @ x + reg, x.T @ np.asarray(topics, np.float64))      # (D + 1) × T
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w[:-1].T, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(w[-1], dtype=torch.float32))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 c: float = 1.0, seed: int = 0) -> float:
    """Accuracy of a standardised multinomial logistic regression trained on frozen features (the transfer test)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


# ---------------------------------------------------------------------------------------------------------------
# The explainer
# ---------------------------------------------------------------------------------------------------------------

@register(METHOD)
class SemanticExplainer(Explainer, Trainable):
    """Dong et al. (CVPR'17): a video caption plus the labelled interpretable neurons that drove it."""

    name = METHOD
    needs = frozenset({"features"})
    produces = frozenset({"sentence", "neurons"})
    learned = True
    Params = SemanticParams
    TrainJob = SemanticTrainJob

    def __init__(self, config: SemanticConfig | Mapping[str, Any] | None = None, *,
                 device: str | torch.device = "cpu"):
        from interp_ray.config import validate

        self.config = config if isinstance(config, SemanticConfig) else \
            validate(SemanticConfig, dict(config or {}), source="semantic config")
        self.device = torch.device(device)
        self.vocab: Vocabulary | None = None
        self.topics = None                        # interp_ray.topics.TopicModel
        self.model: SemanticCaptioner | None = None
        self.frame_dim: int | None = None
        self.neurons: list[NeuronLabel] = []
        self.label_config: LabelConfig | None = None
        self.history: list[dict] = []
        self.info: dict[str, Any] = {}
        self.frame_column = "features"            # the row column that holds the frame features

    # -- set-up and training -----------------------------------------------------------------------------------

    def setup(self, items, topic_model, *, seed: int = 0) -> "SemanticExplainer":
        """Vocabulary from the items' sentences, the topic model, and a seeded fresh captioner."""
        self.vocab = self.vocab or Vocabulary.build([s for row in items.sentences for s in row],
                                                    min_count=self.config.min_count)
        self.topics = topic_model
        self.frame_dim = items.dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = SemanticCaptioner(self.frame_dim, len(self.vocab), topic_model.num_topics, self.config)
        return self

    def caption_data(self, items) -> CaptionData:
        self._ready()
        if items.dim != self.frame_dim:
            raise UserError(f"frame features have {items.dim} values per frame; this captioner was trained on "
                            f"{self.frame_dim}")
        topics = self.topics.transform(items.sentences)
        return make_caption_data(items.features, items.mask, topics, items.sentences, self.vocab,
                                 self.config.max_len)

    def fit(self, train, val=None, *, topic_model=None, settings: SemanticTrainConfig | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> "SemanticExplainer":
        """Train in this process (no Ray) with the epoch trainer a Ray Train worker runs (``trainer``)."""
        from interp_ray.explainers.captioning import table_batches
        from interp_ray.topics import fit_topics

        settings = settings or SemanticTrainConfig()
        if self.model is None:
            if topic_model is None:
                topic_model, _ = fit_topics(train.sentences)
            self.setup(train, topic_model, seed=settings.seed)
        if val is None:
            hold = np.arange(len(train)) % 10 == 9
            train, val = train.subset(np.flatnonzero(~hold)), train.subset(np.flatnonzero(hold))
        for items in (train, val):
            self._check_dim(items.dim)
        torch.manual_seed(settings.seed)
        trainer = self.caption_trainer(settings, device=self.device)

        def columns(items) -> dict[str, Any]:
            return {"features": items.features, "mask": items.mask, "sentences": list(items.sentences)}

        rows = table_batches(columns(train), 256, seed=settings.seed)
        val_rows = table_batches(columns(val), 256)
        history = list(self.history)
        for epoch in range(settings.epochs):
            row = trainer.run_epoch(epoch, rows(epoch), val_rows(epoch))
            history.append(row)
            if on_epoch:
                on_epoch(row)
        self.use_state(trainer.best_state, history)
        return self

    def _check_dim(self, dim: int) -> None:
        if dim != self.frame_dim:
            raise UserError(f"frame features have {dim} values per frame; this captioner was trained on "
                            f"{self.frame_dim}")

    # -- the training protocol (interp_ray.explainers.base.Trainable; jobs/train_explainer.py) ------------------

    def pair_batch(self, batch: Batch, device: torch.device | str = "cpu") -> PairBatch:
        """A batch of clip rows as training input: frame features, mask, the clips' topic vectors (of their own
        captions) and one pair per reference sentence."""
        feats = frame_features(batch[self.frame_column])
        self._check_dim(feats.shape[2])
        mask = (np.asarray(batch["mask"], dtype=bool) if "mask" in batch
                else np.ones(feats.shape[:2], dtype=bool))
        sentences = sentence_rows(batch["sentences"], len(feats))
        topics = self.topics.transform(sentences).astype(np.float32)
        pairs = make_pairs(np.zeros((len(feats), 0), np.float32), sentences, self.vocab, self.config.max_len,
                           allow_empty=True)
        return PairBatch({"feats": torch.from_numpy(np.ascontiguousarray(feats)).to(device),
                          "mask": torch.from_numpy(mask).to(device),
                          "topics": torch.from_numpy(topics).to(device)}, pairs)

    def caption_trainer(self, settings: SemanticTrainConfig, *, device: Any = "cpu",
                        wrap: Callable[[nn.Module], nn.Module] | None = None) -> CaptionTrainer:
        wrap = wrap or (lambda m: m.to(device))
        return CaptionTrainer(self.model, prepare=lambda b: self.pair_batch(b, device), loss=_pair_losses,
                              epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                              weight_decay=settings.weight_decay, grad_clip=settings.grad_clip, seed=settings.seed,
                              select="nll", metrics=LOSS_METRICS, model=wrap(self.model))

    @classmethod
    def from_rows(cls, job: SemanticTrainJob, rows: Callable[[], Iterable[Batch]], *,
                  class_names: Sequence[str] | None = None) -> "SemanticExplainer":
        """One streaming pass over the training clips for their captions (text only: LDA topics and the vocabulary
        are fitted on them) and the frame-feature width; then a seeded captioner."""
        from types import SimpleNamespace

        from interp_ray.topics import fit_topics

        sentences: list[list[str]] = []
        dim = None
        for batch in rows():
            feats = frame_features(batch[job.frame_column])
            dim = int(feats.shape[2])
            sentences.extend(sentence_rows(batch["sentences"], len(feats)))
        if dim is None:
            raise UserError("no training clips: the data is empty")
        topic_model, _ = fit_topics(sentences, job.topics)
        self = cls(job.explainer)
        self.frame_column = job.frame_column
        self.setup(SimpleNamespace(sentences=sentences, dim=dim), topic_model, seed=job.train.seed)
        src, opts = job.source, job.source.data.options
        # ``data`` in the shape serving and ``revise-caption`` read: which CNN layer, over which generated clips.
        data = {"source": "scenes" if src.data.name == "scene_clips" else src.data.name, "layer": job.frame_column,
                "checkpoint": src.checkpoint, "frames": opts.get("frames", 8), "seed": opts.get("seed", 0),
                "size": opts.get("size", 64), "sentences_per_clip": opts.get("sentences_per_image", 5)}
        self.info = {"data": data, "source": src.model_dump(), "topics": job.topics.model_dump(),
                     "frame_column": job.frame_column}
        return self

    def train_columns(self) -> list[str]:
        return [self.frame_column, "sentences"]

    def trainer(self, job: SemanticTrainJob, *, device: Any = "cpu",
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> EpochTrainer:
        return self.caption_trainer(job.train, device=device, wrap=wrap)

    def use_state(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.history = [dict(h) for h in history]

    def finish(self, job: SemanticTrainJob, rows: Callable[[], Iterable[Batch]]) -> dict[str, Any]:
        """Label the neurons by prediction difference on the training clips (streamed: only the interpretable
        layer's activations, N × D, are gathered)."""
        acts = []
        for batch in rows():
            feats = frame_features(batch[self.frame_column])
            mask = batch["mask"] if "mask" in batch else None
            acts.append(self.encode(feats, mask)["a"])
        labels = self.label_activations(np.concatenate(acts), label_config(job.labels))
        return {"neurons": len(labels), "confident": sum(n.confident for n in labels)}

    def _ready(self) -> None:
        if self.model is None or self.vocab is None or self.topics is None:
            raise UserError("this semantic explainer is not trained: call fit() or load a checkpoint")

    # -- features, captions, labels ------------------------------------------------------------------------

    def _tensors(self, feats: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.as_tensor(np.asarray(feats, dtype=np.float32))
        if f.ndim != 3:
            raise UserError(f"features must be N × K × D frame features, got shape {tuple(f.shape)}")
        if f.shape[2] != self.frame_dim:
            raise UserError(f"frame features have {f.shape[2]} values per frame; this captioner was trained on "
                            f"{self.frame_dim}")
        m = torch.ones(f.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask, bool))
        if m.shape != f.shape[:2] or not bool(m.any(1).all()):
            raise UserError("mask must be N × K with at least one real frame per video")
        return f, m

    @torch.no_grad()
    def encode(self, feats: Any, mask: Any = None, *, batch_size: int = 512) -> dict[str, np.ndarray]:
        """v̄, a and ŝ of every video (eval mode)."""
        self._ready()
        f, m = self._tensors(feats, mask)
        self.model.eval()
        out: dict[str, list] = {"vbar": [], "a": [], "s_hat": []}
        for lo in range(0, len(f), batch_size):
            enc = self.model.encode(f[lo:lo + batch_size], m[lo:lo + batch_size])
            out["vbar"].append(enc.vbar.numpy())
            out["a"].append(enc.a.numpy())
            out["s_hat"].append(enc.s_hat.numpy())
        return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}

    def caption(self, feats: Any, mask: Any = None, *, edit: NeuronEdit | None = None,
                max_len: int | None = None) -> list[str]:
        self._ready()
        if edit and self.config.decoder_reads == "v":
            raise UserError("this captioner's decoder does not read the interpretable layer (decoder_reads: v, the "
                            "released code's design), so editing neurons cannot change its captions; train with "
                            "decoder_reads: a")
        f, m = self._tensors(feats, mask)
        ids, _ = greedy_decode(self.model, f, m, max_len=max_len or self.config.max_len, start=self.vocab.start,
                               end=self.vocab.end, edit=edit)
        return [self.vocab.decode(s) for s in ids]

    def label(self, items_or_feats: Any, mask: Any = None, cfg: LabelConfig | None = None) -> list[NeuronLabel]:
        """Label every neuron by prediction difference over the given videos; kept in ``self.neurons``."""
        feats = getattr(items_or_feats, "features", items_or_feats)
        mask = getattr(items_or_feats, "mask", mask)
        return self.label_activations(self.encode(feats, mask)["a"], cfg)

    def label_activations(self, acts: np.ndarray, cfg: LabelConfig | None = None) -> list[NeuronLabel]:
        """``label`` from the interpretable layer's activations of the videos (N × D), in their order."""
        cfg = cfg or LabelConfig()
        pd, tops = prediction_difference(self.model.topic, acts, top_n=cfg.top_n, form=cfg.form,
                                         replace=cfg.replace, eps=cfg.eps)
        self.neurons = label_neurons(pd, tops, acts, self.topics.topic_word, self.topics.vocabulary, cfg,
                                     self.topics.top_words(5))
        self.label_config = cfg
        return self.neurons

    def neurons_for(self, words_or_ids: Iterable[str | int], *, match: str = "label") -> list[int]:
        """Neuron ids named directly (integers / digit strings) or through a word: ``match="label"`` selects the
        neurons confidently labelled with it, ``"words"`` those that have it among their top-m words (a neuron of a
        red striped circle is labelled with one word but encodes all three)."""
        out: list[int] = []
        for x in words_or_ids:
            s = str(x).strip()
            if s.isdigit():
                d = int(s)
                if self.model is not None and not 0 <= d < self.config.interp_dim:
                    raise UserError(f"neuron {d} does not exist (the interpretable layer has "
                                    f"{self.config.interp_dim} units)")
                out.append(d)
                continue
            if not self.neurons:
                raise UserError("this checkpoint has no neuron labels: label the neurons first (label())")
            w = s.lower()
            out.extend(n.neuron for n in self.neurons
                       if ((n.label == w and n.confident) if match == "label" else (w in n.words)))
        return sorted(set(out))

    def make_edit(self, suppress: Iterable[str | int] = (), boost: Iterable[str | int] = (), *,
                  boost_scale: float = 1.0, match: str = "label") -> NeuronEdit:
        """Suppressed neurons → 0; boosted neurons → ``boost_scale`` × their typical activation on V_d (a boost wins
        over a suppression of the same neuron)."""
        sup = self.neurons_for(suppress, match=match)
        typical = {n.neuron: n.typical for n in self.neurons}
        boosted = {d: boost_scale * typical.get(d, 1.0) for d in self.neurons_for(boost, match=match)}
        return NeuronEdit([d for d in sup if d not in boosted], boosted)

    def revise(self, feats: Any, mask: Any = None, *, wrong: Iterable[str] = (), right: Iterable[str] = (),
               base_edit: NeuronEdit | None = None, boost_scale: float = 1.0, match: str = "label"
               ) -> tuple[list[str], list[str]]:
        """Human-in-the-loop revision: suppress the neurons labelled with ``wrong`` words, boost those labelled with
        ``right`` words, and decode again; returns (captions before, captions after). ``base_edit`` is an edit
        already in force (e.g. a planted error) that the revision is applied on top of."""
        base = base_edit or NeuronEdit()
        before = self.caption(feats, mask, edit=base if base else None)
        fix = self.make_edit(wrong, right, boost_scale=boost_scale, match=match)
        merged = NeuronEdit(sorted((set(base.suppress) | set(fix.suppress)) - set(fix.boost)),
                            {**{d: v for d, v in base.boost.items() if d not in fix.suppress}, **fix.boost})
        return before, self.caption(feats, mask, edit=merged)

    # -- the explainer protocol ------------------------------------------------------------------------------

    @classmethod
    def from_classifier(cls, classifier: Any, checkpoint: str | None = None, *, device: str | None = None,
                        **options: Any) -> "SemanticExplainer":
        # The captioner decodes step by step on the CPU tensors it makes of its (small) features, whatever device
        # the classifier that computed them runs on.
        return super().from_classifier(classifier, checkpoint, device=device or "cpu", **options)

    @classmethod
    def takes_target(cls) -> bool:
        return True  # an image is captioned as a clip of the target class (else of the prediction)

    def layers(self) -> list[str]:
        """The classifier layer its frame features were taken from (``data.layer`` of its training job): a still
        image is explained as a one-frame clip of that layer's pooled features."""
        data = (self.info or {}).get("data") or {}
        if data.get("source", "scenes") != "scenes":
            raise UserError(f"{self.name} was trained on frame features of another CNN (data.source "
                            f"{data['source']!r}), not on a classifier checkpoint's")
        if not data.get("layer"):
            raise UserError(f"{self.name}'s checkpoint does not record the classifier layer of its frame features "
                            f"(data.layer); train it with jobs.train_explainer")
        return [str(data["layer"])]

    def batch_from(self, images: np.ndarray, targets: np.ndarray,
                   activations: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Each image as a one-frame clip: ``features`` N × 1 × D (its frame feature, pooled as the training clips'
        frames were), an all-true ``mask`` N × 1, and ``label`` (the target, else the classifier's prediction)."""
        from interp_ray.data.video_features import pool_frame_features

        if activations is None:
            raise UserError(f"{self.name} explains images through their frame features: give the activations of "
                            f"{self.layers()[0]!r}")
        feats = pool_frame_features(np.asarray(activations[self.layers()[0]])).astype(np.float32, copy=False)
        if self.frame_dim is not None and feats.shape[1] != self.frame_dim:
            raise UserError(f"{self.name} was trained on {self.frame_dim}-value frame features; layer "
                            f"{self.layers()[0]!r} gives {feats.shape[1]}")
        targets = np.asarray(targets, dtype=np.int64)
        return {"features": feats[:, None, :], "mask": np.ones((len(feats), 1), dtype=bool),
                "label": np.where(targets >= 0, targets, activations["prediction"]).astype(np.int64)}

    def explain(self, batch: Mapping[str, Any], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        self._ready()
        if "features" not in batch:
            raise UserError("the semantic explainer reads 'features' (N × K × D frame features) and optional 'mask'")
        edit = self.make_edit(p.suppress, p.boost, match=p.match) if (p.suppress or p.boost) else None
        sentences = self.caption(batch["features"], batch.get("mask"), edit=edit, max_len=p.max_len)
        f, m = self._tensors(batch["features"], batch.get("mask"))
        with torch.no_grad():
            enc = self.model.encode(f, m, edit)
        acts, s_hat = enc.a.numpy(), enc.s_hat.numpy()
        labels = np.asarray(batch.get("label", np.full(len(sentences), -1)), dtype=np.int64)
        out = []
        for i, sentence in enumerate(sentences):
            out.append(Explanation(label=int(labels[i]), method=self.name, sentence=sentence,
                                   neurons=self.driving_neurons(acts[i], p.top_neurons),
                                   extra={"topics": [int(k) for k in np.argsort(-s_hat[i])[:3]],
                                          "edit": asdict(edit) if edit else None}))
        return out

    def driving_neurons(self, a: np.ndarray, k: int) -> dict[str, str]:
        """The ``k`` confidently labelled neurons most active relative to their typical top activation."""
        ranked = sorted((n for n in self.neurons if n.confident and n.typical > 0),
                        key=lambda n: -float(a[n.neuron]) / n.typical)
        return {str(n.neuron): n.label for n in ranked[:k] if a[n.neuron] > 0}

    # -- checkpoints -----------------------------------------------------------------------------------------

    def checkpoint_config(self) -> dict[str, Any]:
        return {"explainer": METHOD, "semantic": self.config.model_dump(), "frame_dim": self.frame_dim,
                "num_topics": self.topics.num_topics, "vocab_size": len(self.vocab),
                "vocab_digest": self.vocab.digest, "history": self.history, "info": self.info}

    def files(self) -> dict[str, bytes]:
        files = {VOCAB_FILE: self.vocab.to_json().encode(), TOPICS_FILE: self.topics.to_json().encode()}
        if self.neurons:
            files[NEURONS_FILE] = json.dumps({"config": self.label_config.model_dump() if self.label_config else None,
                                              "neurons": [asdict(n) for n in self.neurons]}).encode()
        return files

    def save(self, path: str) -> str:
        from interp_ray.checkpoint import save_checkpoint

        self._ready()
        return save_checkpoint(path, kind=KIND, config=self.checkpoint_config(),
                               state_dict=self.model.state_dict(), files=self.files())

    @classmethod
    def load(cls, path: str, *, device: str | torch.device = "cpu", **_: Any) -> "SemanticExplainer":
        from interp_ray.checkpoint import read_checkpoint
        from interp_ray.topics import TopicModel

        ckpt = read_checkpoint(path, kind=KIND)
        cfg = ckpt.config
        if cfg.get("explainer") != METHOD:
            raise UserError(f"checkpoint {path} holds a {cfg.get('explainer')!r} explainer, not {METHOD!r}")
        for name in (VOCAB_FILE, TOPICS_FILE):
            if name not in ckpt.files:
                raise UserError(f"checkpoint {path} has no {name}")
        self = cls(cfg["semantic"], device=device)
        self.vocab = Vocabulary.from_json(ckpt.files[VOCAB_FILE], source=f"{path}/{VOCAB_FILE}")
        if self.vocab.digest != cfg.get("vocab_digest"):
            raise UserError(f"vocabulary mismatch in {path}: {VOCAB_FILE} is not the one the weights were trained with")
        self.topics = TopicModel.from_json(ckpt.files[TOPICS_FILE], source=f"{path}/{TOPICS_FILE}")
        self.frame_dim = int(cfg["frame_dim"])
        self.history, self.info = cfg.get("history", []), cfg.get("info", {})
        self.frame_column = self.info.get("frame_column", "features")
        self.model = SemanticCaptioner(self.frame_dim, len(self.vocab), self.topics.num_topics, self.config)
        try:
            self.model.load_state_dict(ckpt.state_dict)
        except RuntimeError as e:
            raise UserError(f"checkpoint {path}: weights do not fit the configured captioner "
                            f"({str(e).splitlines()[0]})") from None
        if NEURONS_FILE in ckpt.files:
            raw = json.loads(ckpt.files[NEURONS_FILE])
            self.neurons = [NeuronLabel(**n) for n in raw["neurons"]]
            self.label_config = LabelConfig.model_validate(raw["config"]) if raw.get("config") else None
        self.model.to(self.device).eval()
        return self
