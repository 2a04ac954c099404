"""Latent topics of each item's reference sentences: the semantic target s of Dong et al. (CVPR 2017).

Every item (video, clip or image) becomes one document — its reference sentences joined — and LDA over all training
documents gives a topic distribution per item (rows on the simplex) and a topic–word table. The paper used WarpLDA
with T = 100; here scikit-learn's ``LatentDirichletAllocation`` (variational Bayes) with the spec's defaults
α = 50/T and β = 0.01, English stop words removed by ``CountVectorizer``. T is configurable: the generated scenes
have a vocabulary of ~60 content words and 12 classes, so T = 12–20 suits them (100 topics would mostly be empty).

``TopicModel.to_json`` saves what is needed to reuse the model without scikit-learn pickles: the vocabulary, the
(unnormalised) topic–word parameters λ and the priors; ``transform`` on a loaded model runs the same variational
E-step as scikit-learn (it rebuilds the estimator from λ), so topic vectors of new items match the fitted ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from pydantic import Field

from interp_ray.config import Section
from interp_ray.errors import UserError

TOPICS_FORMAT = "interp-ray-topics/1"


class TopicConfig(Section):
    """LDA settings. ``alpha``/``beta`` default to the spec's 50/T and 0.01."""

    num_topics: int = Field(16, ge=2)
    alpha: float | None = Field(None, gt=0)      # document–topic prior; None → 50 / num_topics
    beta: float = Field(0.01, gt=0)              # topic–word prior
    max_iter: int = Field(50, gt=0)              # batch variational EM passes
    min_df: int = Field(1, ge=1)                 # drop words seen in fewer documents
    stop_words: str | None = "english"           # scikit-learn's English list; None keeps every word
    seed: int = 0

    @property
    def doc_topic_prior(self) -> float:
        return self.alpha if self.alpha is not None else 50.0 / self.num_topics


def documents(sentences: Iterable[Sequence[str] | str]) -> list[str]:
    """One document per item: its non-blank reference sentences joined by spaces."""
    docs = []
    for refs in sentences:
        items = [refs] if isinstance(refs, str) else list(refs)
        docs.append(" ".join(str(s).strip() for s in items if str(s).strip()))
    return docs


@dataclass
class TopicModel:
    """A fitted LDA: ``vocabulary`` (words, in column order) and ``components`` (T × V variational λ)."""

    vocabulary: list[str]
    components: np.ndarray
    doc_topic_prior: float
    topic_word_prior: float
    max_iter: int = 50
    seed: int = 0
    stop_words: str | None = "english"

    @property
    def num_topics(self) -> int:
        return int(self.components.shape[0])

    @property
    def topic_word(self) -> np.ndarray:
        """T × V: each topic's word distribution φ_k (rows sum to 1)."""
        c = np.asarray(self.components, dtype=np.float64)
        return c / c.sum(axis=1, keepdims=True)

    def top_words(self, k: int = 8) -> list[list[str]]:
        phi = self.topic_word
        return [[self.vocabulary[j] for j in np.argsort(-row, kind="stable")[:k]] for row in phi]

    def _vectorizer(self):
        from sklearn.feature_extraction.text import CountVectorizer

        # A fixed vocabulary: new documents are counted in the fitted columns (unknown words ignored).
        return CountVectorizer(vocabulary={w: i for i, w in enumerate(self.vocabulary)}, stop_words=self.stop_words)

    def _estimator(self):
        from sklearn.decomposition._lda import _dirichlet_expectation_2d

        lda = _lda_class()(n_components=self.num_topics, doc_topic_prior=self.doc_topic_prior,
                                        topic_word_prior=self.topic_word_prior, max_iter=self.max_iter,
                                        learning_method="batch", random_state=self.seed)
        # The fitted state transform() reads (scikit-learn's own attribute names).
        lda.components_ = np.asarray(self.components, dtype=np.float64)
        lda.exp_dirichlet_component_ = np.exp(_dirichlet_expectation_2d(lda.components_))
        lda.n_features_in_ = len(self.vocabulary)
        lda.doc_topic_prior_ = self.doc_topic_prior
        lda.topic_word_prior_ = self.topic_word_prior
        lda.random_state_ = np.random.mtrand._rand
        return lda

    def transform(self, sentences: Iterable[Sequence[str] | str]) -> np.ndarray:
        """N × T float32 topic distributions of new items (rows sum to 1; an item with no known word is uniform)."""
        counts = self._vectorizer().fit_transform(documents(sentences))
        theta = self._estimator().transform(counts)
        return _normalise_rows(theta)

    def to_json(self) -> str:
        return json.dumps({"format": TOPICS_FORMAT, "vocabulary": self.vocabulary,
                           "components": np.asarray(self.components).tolist(),
                           "doc_topic_prior": self.doc_topic_prior, "topic_word_prior": self.topic_word_prior,
                           "max_iter": self.max_iter, "seed": self.seed, "stop_words": self.stop_words,
                           "top_words": self.top_words(10)})

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "topics") -> "TopicModel":
        try:
            raw = json.loads(text)
            if raw.get("format") != TOPICS_FORMAT:
                raise ValueError
            comp = np.asarray(raw["components"], dtype=np.float64)
            vocab = [str(w) for w in raw["vocabulary"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{source}: not a topic table (expected JSON with format {TOPICS_FORMAT!r})") from None
        if comp.ndim != 2 or comp.shape[1] != len(vocab) or (comp <= 0).any():
            raise UserError(f"{source}: components must be a positive T × {len(vocab)} table")
        return cls(vocab, comp, float(raw["doc_topic_prior"]), float(raw["topic_word_prior"]),
                   int(raw.get("max_iter", 50)), int(raw.get("seed", 0)), raw.get("stop_words", "english"))


def _lda_class():
    """scikit-learn's LDA with the prior constraints widened to any positive value.

    scikit-learn validates ``doc_topic_prior`` in [0, 1], but the spec's default α = 50/T exceeds 1 for T < 50 (and
    WarpLDA accepts it); the variational updates themselves are valid for any α > 0, so only the check is widened.
    """
    from numbers import Real

    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.utils._param_validation import Interval

    class WideLDA(LatentDirichletAllocation):
        _parameter_constraints = {**LatentDirichletAllocation._parameter_constraints,
                                  "doc_topic_prior": [None, Interval(Real, 0, None, closed="neither")],
                                  "topic_word_prior": [None, Interval(Real, 0, None, closed="neither")]}

    return WideLDA


def _normalise_rows(theta: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    sums = theta.sum(axis=1, keepdims=True)
    theta = np.where(sums > 0, theta / np.where(sums > 0, sums, 1.0), 1.0 / theta.shape[1])
    return theta.astype(np.float32)


def fit_topics(sentences: Sequence[Sequence[str] | str], config: TopicConfig | None = None
               ) -> tuple[TopicModel, np.ndarray]:
    """Fit LDA on the items' documents; returns the model and the items' N × T topic distributions."""
    from sklearn.feature_extraction.text import CountVectorizer

    cfg = config or TopicConfig()
    docs = documents(sentences)
    if not any(docs):
        raise UserError("cannot fit topics: every item's reference sentences are blank")
    vec = CountVectorizer(stop_words=cfg.stop_words, min_df=cfg.min_df)
    try:
        counts = vec.fit_transform(docs)
    except ValueError as e:  # "empty vocabulary; perhaps the documents only contain stop words"
        raise UserError(f"cannot fit topics: {e}") from None
    lda = _lda_class()(n_components=cfg.num_topics, doc_topic_prior=cfg.doc_topic_prior,
                                    topic_word_prior=cfg.beta, max_iter=cfg.max_iter, learning_method="batch",
                                    random_state=cfg.seed)
    theta = lda.fit_transform(counts)
    model = TopicModel(list(vec.get_feature_names_out()), lda.components_.copy(), cfg.doc_topic_prior, cfg.beta,
                       cfg.max_iter, cfg.seed, cfg.stop_words)
    return model, _normalise_rows(theta)
