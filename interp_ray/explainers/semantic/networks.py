"""The captioner (bi-LSTM encoder, interpretable layer with its topic head, soft-attention LSTM decoder), edits of
its interpretable layer, the paper's training objective and greedy decoding through the captioning kit's loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from interp_ray.explainers._captioning.decoding import greedy_search
from interp_ray.explainers.semantic.config import SemanticConfig


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


@torch.no_grad()
def greedy_decode(model: SemanticCaptioner, feats: torch.Tensor, mask: torch.Tensor, *, max_len: int, start: int,
                  end: int, edit: NeuronEdit | None = None) -> tuple[list[list[int]], Encoded]:
    """The most likely word at each step until ``<end>``; ids without the end token, and the (edited) encoding."""
    model.eval()
    enc = model.encode(feats, mask, edit)
    h, c, keys = model.init_state(enc)

    def step(prev: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        logits, state, _ = model.step(prev, state, keys, enc)
        return F.log_softmax(logits, dim=1), state

    ids, _ = greedy_search(step, (h, c), feats.shape[0], max_len=max_len, start=start, end=end, device=feats.device)
    return ids, enc
