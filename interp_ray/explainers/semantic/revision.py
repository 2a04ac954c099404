"""Dong et al.'s neuron labels and human-in-the-loop caption revision (spec step 6 and the revision procedure; see
``explainer``'s docstring), a mixin of ``SemanticExplainer``.

Kept apart from the captioner's protocol, training and checkpoints so that module stays readable (issue #34). The
host class provides what these methods read: ``model`` (a ``SemanticCaptioner``), ``topics``, ``config``,
``neurons`` / ``label_config`` (written by ``label_activations``, saved with the checkpoint), and ``encode`` /
``caption``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from interp_ray.errors import UserError
from interp_ray.explainers.semantic.config import LabelConfig
from interp_ray.explainers.semantic.labels import NeuronLabel, label_neurons, prediction_difference
from interp_ray.explainers.semantic.networks import NeuronEdit


class NeuronRevision:
    """Label the interpretable layer's neurons, then edit them by word to revise captions."""

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

    def driving_neurons(self, a: np.ndarray, k: int) -> dict[str, str]:
        """The ``k`` confidently labelled neurons most active relative to their typical top activation."""
        ranked = sorted((n for n in self.neurons if n.confident and n.typical > 0),
                        key=lambda n: -float(a[n.neuron]) / n.typical)
        return {str(n.neuron): n.label for n in ranked[:k] if a[n.neuron] > 0}
