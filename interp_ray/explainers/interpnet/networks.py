"""InterpNET's two networks: the classifier head (the paper's MLP over features) and the explainer network (LRCN-2f),
with the sentence loss the explainer network is trained on."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
            for lin, bias in [*((layer, 0.1) for layer in self.layers), (self.out, 0.0)]:
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
