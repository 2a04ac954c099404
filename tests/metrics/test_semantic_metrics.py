"""Scores of the semantic explainer against the scene clips' known attributes."""

from types import SimpleNamespace

import numpy as np
import pytest

from interp_ray.data.scenes import attribute_indices
from interp_ray.data.video_features import VideoItems
from interp_ray.errors import UserError
from interp_ray.explainers.semantic.labels import NeuronLabel
from interp_ray.metrics.semantic import caption_faithfulness, clip_attributes, label_precision


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
