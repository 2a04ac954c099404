"""The MSR-VTT-style frame-feature layout (a tiny fixture written by hand in that exact layout), padding/truncation
with a mask, the writer round-trip, scene clips through a frame CNN, and bad input."""

import json

import numpy as np
import pytest
import torch

from interp_ray.checkpoint import save_classifier
from interp_ray.data.video_features import VideoItems, pad_frames, read_video_features, write_video_features
from interp_ray.errors import UserError
from interp_ray.models import build_model


@pytest.fixture
def layout(tmp_path):
    """Three videos of 2, 5 and 3 frames (D = 4), two in train, one in validate; written without the library."""
    rng = np.random.default_rng(0)
    (tmp_path / "features").mkdir()
    feats = {"video0": rng.normal(size=(2, 4)), "video1": rng.normal(size=(5, 4)), "video2": rng.normal(size=(3, 4))}
    for vid, f in feats.items():
        np.save(tmp_path / "features" / f"{vid}.npy", f.astype(np.float32))
    meta = {"videos": [{"video_id": "video0", "split": "train", "category": 3},
                       {"video_id": "video1", "split": "train"},
                       {"video_id": "video2", "split": "validate", "category": 1}],
            "sentences": [{"video_id": "video0", "caption": "a man is talking"},
                          {"video_id": "video1", "caption": "a dog runs"},
                          {"video_id": "video0", "caption": "someone speaks"},
                          {"video_id": "video2", "caption": "a cat sleeps"}]}
    (tmp_path / "captions.json").write_text(json.dumps(meta))
    return tmp_path, feats


def test_reads_the_layout_with_padding_and_mask(layout):
    root, feats = layout
    items = read_video_features(root, "train", frames=4)
    assert list(items.ids) == ["video0", "video1"]
    assert items.features.shape == (2, 4, 4) and items.mask.shape == (2, 4)
    assert items.mask[0].tolist() == [True, True, False, False]
    np.testing.assert_allclose(items.features[0, :2], feats["video0"], rtol=1e-6)
    assert (items.features[0, 2:] == 0).all()
    assert items.sentences[0] == ["a man is talking", "someone speaks"]
    assert items.labels.tolist() == [3, -1]
    # video1 has 5 frames > 4: equally spaced rows 0, 1, 3, 4 (rounded linspace), all real
    np.testing.assert_allclose(items.features[1], feats["video1"][[0, 1, 3, 4]], rtol=1e-6)
    assert items.mask[1].all()
    val = read_video_features(root, "validate", frames=4)
    assert list(val.ids) == ["video2"] and val.labels.tolist() == [1]


def test_writer_round_trip(layout, tmp_path):
    root, _ = layout
    items = read_video_features(root, None, frames=6)
    out = tmp_path / "copy"
    write_video_features(out, items.subset([0, 1]), "train")
    write_video_features(out, items.subset([2]), "test", append=True)
    back = read_video_features(out, None, frames=6)
    assert list(back.ids) == list(items.ids)
    np.testing.assert_array_equal(back.features, items.features)
    np.testing.assert_array_equal(back.mask, items.mask)
    assert back.sentences == items.sentences and back.labels.tolist() == items.labels.tolist()
    assert list(read_video_features(out, "test", frames=6).ids) == ["video2"]


def test_pad_frames_rejects_empty():
    with pytest.raises(UserError, match="non-empty"):
        pad_frames(np.zeros((0, 3)), 4)


@pytest.mark.parametrize("problem, match", [
    ("missing_file", "missing frame-feature file"),
    ("bad_id", "not a plain file name"),
    ("widths", "disagree on the feature width"),
    ("no_caption", "has no caption"),
    ("bad_json", "expected JSON"),
])
def test_bad_layouts_are_user_errors(layout, problem, match):
    root, _ = layout
    meta = json.loads((root / "captions.json").read_text())
    if problem == "missing_file":
        (root / "features" / "video1.npy").unlink()
    elif problem == "bad_id":
        meta["videos"][0]["video_id"] = "../etc/passwd"
    elif problem == "widths":
        np.save(root / "features" / "video1.npy", np.zeros((3, 7), np.float32))
    elif problem == "no_caption":
        meta["sentences"] = [s for s in meta["sentences"] if s["video_id"] != "video1"]
    if problem == "bad_json":
        (root / "captions.json").write_text("[1, 2]")
    else:
        (root / "captions.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=match):
        read_video_features(root, "train", frames=4)


def test_scene_clips_through_a_frame_cnn(tmp_path):
    """Clips go through ActivationExtractor (frames folded into the batch): one row of per-frame features each."""
    from interp_ray.activations import clip_items
    from interp_ray.data.scenes import load_scene_videos

    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}
    path = tmp_path / "cnn"
    save_classifier(path, build_model("scenes_cnn", **opts), model_name="scenes_cnn", model_options=opts,
                    class_names=[str(i) for i in range(12)], data={"name": "scenes"})
    items = clip_items(str(path), load_scene_videos("val", n=3, frames=4, size=32, sentences_per_image=2), "gap")
    assert isinstance(items, VideoItems)
    assert items.features.shape == (3, 4, 32)           # gap of width 4 → 8·4 channels
    assert items.mask.all() and items.attributes.shape == (3, 4)
    assert len(items.sentences) == 3 and all(len(s) == 2 for s in items.sentences)
    # frames differ (the objects move), so the per-frame features do too
    assert not np.allclose(items.features[0, 0], items.features[0, 1])
    # the same numbers as each frame on its own through the extractor: folding frames into the batch changes nothing
    from interp_ray.activations import ActivationExtractor
    from interp_ray.data.scenes import load_scene_clips

    frames = load_scene_clips("val", n=3, frames=4, size=32).get_batch(np.arange(3))["clip"]
    one = ActivationExtractor(str(path), ["gap"])({"image": frames[:, 1]})["gap"].reshape(3, -1)
    np.testing.assert_allclose(items.features[:, 1], one, rtol=1e-5, atol=1e-6)
