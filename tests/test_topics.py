"""LDA topics: distributions on the simplex, the spec's priors, separation of unrelated vocabularies, the saved
topic–word table reproducing the fitted model, and clear errors."""

import numpy as np
import pytest

from interp_ray.errors import UserError
from interp_ray.topics import TopicConfig, TopicModel, documents, fit_topics

ANIMALS = ["the dog runs after the cat", "a cat and a dog play", "the horse and the dog run"]
KITCHEN = ["a man slices a tomato", "someone slices onion and tomato", "the chef cooks onion soup"]


def corpus(n: int = 30):
    rng = np.random.default_rng(0)
    items, groups = [], []
    for i in range(n):
        g = i % 2
        pool = ANIMALS if g == 0 else KITCHEN
        items.append([pool[j] for j in rng.permutation(3)[:2]])
        groups.append(g)
    return items, np.array(groups)


def test_rows_are_distributions_and_priors_default_to_the_spec():
    items, _ = corpus()
    cfg = TopicConfig(num_topics=4, max_iter=20)
    assert cfg.doc_topic_prior == pytest.approx(50 / 4) and cfg.beta == 0.01
    model, theta = fit_topics(items, cfg)
    assert theta.shape == (len(items), 4)
    assert (theta >= 0).all() and np.allclose(theta.sum(1), 1, atol=1e-5)
    assert np.allclose(model.topic_word.sum(1), 1)
    assert model.doc_topic_prior == pytest.approx(12.5)   # above scikit-learn's usual [0, 1] bound: accepted


def test_stop_words_are_removed():
    model, _ = fit_topics(corpus()[0], TopicConfig(num_topics=2, max_iter=5))
    assert "the" not in model.vocabulary and "and" not in model.vocabulary
    assert "tomato" in model.vocabulary


def test_unrelated_vocabularies_get_different_dominant_topics():
    items, groups = corpus()
    _, theta = fit_topics(items, TopicConfig(num_topics=2, alpha=0.1, max_iter=50))
    dominant = theta.argmax(1)
    # every animal item in one topic, every kitchen item in the other
    assert len(set(dominant[groups == 0])) == 1 and len(set(dominant[groups == 1])) == 1
    assert dominant[groups == 0][0] != dominant[groups == 1][0]


def test_saved_table_reloads_and_transforms_like_the_fitted_model():
    items, _ = corpus()
    model, theta = fit_topics(items, TopicConfig(num_topics=3, max_iter=20))
    loaded = TopicModel.from_json(model.to_json())
    assert loaded.vocabulary == model.vocabulary
    np.testing.assert_allclose(loaded.topic_word, model.topic_word)
    np.testing.assert_allclose(loaded.transform(items), theta, atol=1e-4)
    assert loaded.top_words(3) == model.top_words(3)


def test_documents_join_sentences_and_skip_blanks():
    assert documents([["a b", " ", "c"], "d"]) == ["a b c", "d"]


def test_errors_are_user_errors():
    with pytest.raises(UserError, match="blank"):
        fit_topics([["", " "]])
    with pytest.raises(UserError, match="stop words"):
        fit_topics([["the and of"]], TopicConfig(num_topics=2))
    with pytest.raises(UserError, match="not a topic table"):
        TopicModel.from_json("{}")
