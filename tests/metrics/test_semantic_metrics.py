"""Scores of the semantic explainer against the scene clips' known attributes."""

from types import SimpleNamespace

import numpy as np
import pytest

from interp_ray.data.scenes import attribute_indices
from interp_ray.data.video_features import VideoItems
from interp_ray.errors import UserError
from interp_ray.explainers.semantic.labels import NeuronLabel
from interp_ray.metrics.semantic import (caption_errors, caption_faithfulness, clip_attributes, correcting_edit,
                                        first_correction, label_precision)


def _items(labels):
    n = len(labels)
    return VideoItems(ids=np.array([f"c{i}" for i in range(n)]), features=np.zeros((n, 2, 3), np.float32),
                      mask=np.ones((n, 2), bool), labels=np.array(labels), sentences=[["x"]] * n,
                      attributes=np.stack([attribute_indices(c) for c in labels]))


def test_clip_attributes_name_the_generators_values():
    assert clip_attributes(_items([0])) == [{"shape": "circle", "colour": "red", "pattern": "striped",
                                             "size": "large"}]


def test_faithful_caption_names_every_discriminative_attribute_and_nothing_untrue():
    items = _items([0, 0, 0])   # class 0: a red striped circle (large)
    captions = ["a red striped circle.", "a red circle.", "a blue striped circle."]
    assert caption_faithfulness(captions, items) == pytest.approx(1 / 3)


def _neuron(d, label, top_items, confident=True):
    return NeuronLabel(neuron=d, label=label, topic=0, topic_words=[], score=1.0, margin=0.5, confident=confident,
                       top_items=top_items, typical=1.0)


def test_label_precision_counts_confident_labels_present_in_their_top_clips():
    items = _items([0, 0, 1])
    other = clip_attributes(items)[2]["colour"]
    ex = SimpleNamespace(neurons=[_neuron(0, "red", [0, 1]), _neuron(1, other, [0, 1]),
                                  _neuron(2, "red", [2], confident=False)])
    r = label_precision(ex, items, presence=0.5)
    assert (r["confident"], r["correct"], r["share"]) == (2, 1, 0.5)


def test_clips_without_attributes_are_a_clear_error():
    items = _items([0])
    items.attributes = None
    with pytest.raises(UserError, match="attributes"):
        clip_attributes(items)


class WordEditCaptioner:
    """A captioner whose edits act on words: clip i's caption is ``captions[i]`` (the clip's index is its first
    feature); suppressing a word's neurons deletes the word, boosting puts the word before the shape. ``works``
    False: the edit changes nothing (a captioner the edit fails on)."""

    def __init__(self, captions, labelled, works=True):
        self.captions, self.works = captions, works
        self.neurons = [_neuron(d, w, [0]) for d, w in enumerate(labelled)]

    def revise(self, feats, mask, *, wrong=(), right=()):
        before = self.captions[int(feats[0, 0, 0])]
        words = [w for w in before.rstrip(".").split() if not (self.works and w in wrong)]
        if self.works:
            words[-1:-1] = [w for w in right if w not in words]
        return [before], [" ".join(words) + "."]


def _indexed(labels):
    items = _items(labels)
    items.features[:, 0, 0] = np.arange(len(labels))
    return items


def test_a_caption_is_wrong_in_what_it_names_untrue_and_what_it_leaves_out():
    attrs = clip_attributes(_items([0]))[0]   # class 0: a large red striped circle
    assert caption_errors("a red striped circle.", 0, attrs) == ([], [])
    assert caption_errors("a blue striped circle.", 0, attrs) == (["blue"], ["red"])
    assert caption_errors("a red circle.", 0, attrs) == ([], ["striped"])


def test_the_edit_suppresses_untrue_words_and_boosts_the_true_value_and_missing_words_a_neuron_carries():
    attrs = clip_attributes(_items([0]))[0]
    ex = WordEditCaptioner([], ["blue", "red", "striped"])
    assert correcting_edit(ex, "a blue circle.", 0, attrs) == (["blue"], ["red", "striped"])
    ex = WordEditCaptioner([], ["red"])        # no neuron carries "blue": only the boost is left
    assert correcting_edit(ex, "a blue striped circle.", 0, attrs) == ([], ["red"])


def test_the_edit_example_is_the_first_wrong_caption_the_labels_can_edit_and_says_whether_it_worked():
    items = _indexed([0, 0, 0, 0])
    captions = ["a red striped circle.",      # right: skipped
                "a red striped square.",      # wrong, but no neuron carries square or circle: nothing to edit
                "a blue striped circle.",     # the first that qualifies
                "a yellow striped circle."]
    ex = WordEditCaptioner(captions, ["blue", "red"])
    r = first_correction(ex, items, captions)
    assert (r["id"], r["untrue"], r["missing"], r["suppress"], r["boost"]) == ("c2", ["blue"], ["red"], ["blue"],
                                                                              ["red"])
    assert r["before"] == captions[2] and r["after"] == "a striped red circle."
    assert r["suppressed_gone"] and r["boosted_named"] and r["corrected"]
    failed = first_correction(WordEditCaptioner(captions, ["blue", "red"], works=False), items, captions)
    assert failed["after"] == captions[2]
    assert not (failed["suppressed_gone"] or failed["boosted_named"] or failed["corrected"])
    assert first_correction(WordEditCaptioner(captions, ["purple"]), items, captions) is None
