"""Neuron labels by prediction difference (spec step 6, a reconstruction; see the explainer's module docstring), the
topic head's refit for a λ = 0 model, and the linear probe of the transfer test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers.semantic.config import LabelConfig


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
