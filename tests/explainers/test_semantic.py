"""Dong et al.'s captioner: masked pooling, the interpretive loss's reach, neuron edits, prediction difference,
labels, the probe, training, checkpoints and the explainer protocol — on tiny sizes."""

import numpy as np
import pytest
import torch

from interp_ray.data.video_features import VideoItems
from interp_ray.errors import UserError
from interp_ray.explainers import explainer_names, get_explainer
from interp_ray.explainers.semantic.config import LabelConfig, SemanticConfig, SemanticTrainConfig
from interp_ray.explainers.semantic.explainer import SemanticExplainer
from interp_ray.explainers.semantic.labels import fit_topic_head, label_neurons, linear_probe, prediction_difference
from interp_ray.explainers.semantic.networks import NeuronEdit, SemanticCaptioner, masked_mean
from interp_ray.explainers.semantic.training import batch_losses, batch_tensors
from interp_ray.topics import TopicConfig, TopicModel, fit_topics

D, K, T = 6, 5, 3
SMALL = dict(enc_hidden=4, interp_dim=5, word_dim=6, dec_hidden=8, att_dim=4, dropout=0.0, max_len=8)


# Small LSTMs on a shared 2-core box: one torch thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("pinned_torch_threads")


def toy_items(n: int = 24, seed: int = 0) -> VideoItems:
    """Two kinds of video (feature sign) with matching captions; a few videos are padded."""
    rng = np.random.default_rng(seed)
    kinds = np.arange(n) % 2
    feats = rng.normal(size=(n, K, D)).astype(np.float32) * 0.3
    feats[:, :, 0] += np.where(kinds == 0, 2.0, -2.0)[:, None]
    mask = np.ones((n, K), bool)
    mask[::3, 3:] = False
    feats[~mask] = 0
    words = {0: ["a red ball rolls", "the red ball"], 1: ["a blue cube sits", "the blue cube"]}
    return VideoItems(np.array([f"v{i}" for i in range(n)]), feats, mask, kinds.astype(np.int64),
                      [words[k] for k in kinds])


def model(reads: str = "a", lam: float = 0.1, seed: int = 0) -> SemanticCaptioner:
    torch.manual_seed(seed)
    return SemanticCaptioner(D, 12, T, SemanticConfig(**SMALL, decoder_reads=reads, interp_weight=lam))


def test_masked_mean_ignores_padding():
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = masked_mean(x, mask)
    torch.testing.assert_close(out[0], x[0, :2].mean(0))
    torch.testing.assert_close(out[1], x[1].mean(0))


@pytest.mark.parametrize("reads", ["v", "a"])
def test_encoding_ignores_whatever_is_in_padded_frames(reads):
    m = model(reads).eval()
    f = torch.randn(1, K, D)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    garbage = f.clone()
    garbage[0, 3:] = 100.0
    a, b = m.encode(f * mask[..., None], mask), m.encode(garbage, mask)
    short = m.encode(f[:, :3], torch.ones(1, 3, dtype=torch.bool))   # the same video without padding
    for x, y in ((a, b), (a, short)):
        torch.testing.assert_close(x.vbar, y.vbar)
        torch.testing.assert_close(x.a, y.a)
        torch.testing.assert_close(x.s_hat, y.s_hat)
    torch.testing.assert_close(a.memory[:, :3], short.memory)
    assert (b.memory[0, 3:] == 0).all()


def _grads(m, lam, items, *, nll_only=False):
    m.cfg = m.cfg.model_copy(update={"interp_weight": lam})
    m.zero_grad()
    from interp_ray.explainers.semantic.training import make_caption_data
    from interp_ray.text import Vocabulary

    vocab = Vocabulary.build([s for r in items.sentences for s in r])
    data = make_caption_data(items.features, items.mask, np.full((len(items), T), 1 / T, np.float32),
                             items.sentences, vocab, 8)
    out = batch_losses(m, batch_tensors(data, np.arange(len(data)), torch.device("cpu")), m.cfg)
    (out["nll"] if nll_only else out["loss"]).backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in m.named_parameters()}


def test_lambda_zero_gives_the_topic_head_no_gradient_and_the_encoder_only_the_caption_gradient():
    items = toy_items(6)
    m = SemanticCaptioner(D, 20, T, SemanticConfig(**SMALL, decoder_reads="v", attention_penalty=0.0))
    zero, nll = _grads(m, 0.0, items), _grads(m, 0.0, items, nll_only=True)
    assert zero["topic.weight"].abs().max() == 0 and zero["topic.bias"].abs().max() == 0
    for k in ("encoder.weight_ih_l0", "encoder.weight_ih_l0_reverse", "interp.weight"):
        torch.testing.assert_close(zero[k], nll[k])
    # decoder_reads=v: the interpretable layer is a side head, so only L_I reaches W_t
    assert zero["interp.weight"].abs().max() == 0
    some = _grads(m, 0.1, items)
    assert some["topic.weight"].abs().max() > 0
    assert not torch.allclose(some["encoder.weight_ih_l0"], nll["encoder.weight_ih_l0"])


def test_suppressing_a_neuron_changes_exactly_its_activation():
    m = model("a").eval()
    f, mask = torch.randn(3, K, D), torch.ones(3, K, dtype=torch.bool)
    mask[0, 4:] = False
    base = m.encode(f, mask)
    d = int(base.a.sum(0).argmax())
    edited = m.encode(f, mask, NeuronEdit(suppress=[d]))
    assert (edited.a[:, d] == 0).all() and (edited.memory[..., d] == 0).all()
    others = [j for j in range(SMALL["interp_dim"]) if j != d]
    torch.testing.assert_close(edited.a[:, others], base.a[:, others])
    torch.testing.assert_close(edited.memory[..., others], base.memory[..., others])
    boosted = m.encode(f, mask, NeuronEdit(boost={d: 7.0}))
    assert (boosted.a[:, d] == 7.0).all()
    assert (boosted.memory[0, :4, d] == 7.0).all() and (boosted.memory[0, 4:] == 0).all()  # padding stays empty


@pytest.mark.parametrize("form", ["diff", "log"])
def test_prediction_difference_is_zero_without_an_outgoing_weight(form):
    head = torch.nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.0]]))
        head.bias.fill_(1.0)
    acts = np.abs(np.random.default_rng(0).normal(size=(30, 4))).astype(np.float32)
    acts[:, 3] = 0.0                                          # neuron 3 never fires
    pd, tops = prediction_difference(head, acts, top_n=5, form=form)
    assert pd[1, 0] == 0 and pd[0, 1] == 0 and pd[2, 1] == 0   # no weight from neuron to topic
    assert (pd[3] == 0).all() and len(tops[3]) == 0
    if form == "diff":                                        # linear head, a_d ← 0: PD = w_kd · mean a_d over V_d
        top0 = np.argsort(-acts[:, 0], kind="stable")[:5]
        assert pd[0, 0] == pytest.approx(acts[top0, 0].mean(), rel=1e-5)
        assert pd[0, 2] == pytest.approx(0.3 * acts[top0, 0].mean(), rel=1e-5)


def test_labels_follow_the_largest_word_score_and_the_margin_rule():
    pd = np.array([[1.0, 0.0], [0.5, 0.45], [0.0, 0.0]])
    phi = np.array([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9]])        # topic 0 → "red", topic 1 → "blue"
    acts = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    tops = [np.array([0, 1]), np.array([1]), np.array([], dtype=np.int64)]
    labels = label_neurons(pd, tops, acts, phi, ["red", "ball", "blue"],
                           LabelConfig(margin=0.2, concepts=["red", "blue"]))
    assert labels[0].label == "red" and labels[0].confident and labels[0].typical == pytest.approx(1.5)
    assert labels[1].label == "red" and not labels[1].confident   # 0.45 vs 0.405: margin 0.1 < 0.2
    assert labels[2].label is None and not labels[2].confident
    assert labels[0].words == ["red"]                     # blue scores 0: only positive words are kept
    assert labels[1].words == ["red", "blue"]
    topic_level = label_neurons(pd, tops, acts, phi, ["red", "ball", "blue"], LabelConfig(level="topic"))
    assert topic_level[0].label == "topic 0"


def test_the_scenes_concept_words_are_written_out_in_the_config_not_looked_up_in_the_dataset():
    # The explainer no longer imports the scenes dataset for the attribute words: the config lists them, and they
    # must stay the dataset's words (the label-precision metric checks labels against exactly these).
    from interp_ray.config import load_config
    from interp_ray.data.scenes import ATTRIBUTE_VOCAB
    from interp_ray.explainers.semantic.config import SemanticTrainJob

    job = load_config(SemanticTrainJob, "configs/semantic_scenes.yaml")
    assert job.labels.concepts == list(ATTRIBUTE_VOCAB)
    with pytest.raises(UserError, match="labels.concepts: list the concept words themselves"):
        load_config(SemanticTrainJob, "configs/semantic_scenes.yaml", ["labels.concepts=[attributes]"])


def test_words_select_neurons_by_label_or_by_top_words():
    from interp_ray.explainers.semantic.labels import NeuronLabel

    ex = SemanticExplainer(SemanticConfig(**SMALL))
    ex.neurons = [NeuronLabel(0, "red", 0, [], 1.0, 0.5, True, [1], 1.0, ["red", "circle"]),
                  NeuronLabel(1, "circle", 0, [], 1.0, 0.5, True, [1], 2.0, ["circle", "red"]),
                  NeuronLabel(2, "red", 0, [], 1.0, 0.1, False, [1], 1.0, ["red"])]
    assert ex.neurons_for(["red"]) == [0]                       # confident labels only
    assert ex.neurons_for(["red"], match="words") == [0, 1, 2]
    assert ex.neurons_for(["2", "circle"]) == [1, 2]
    edit = ex.make_edit(["red"], ["circle"], boost_scale=2.0)
    assert edit.suppress == [0] and edit.boost == {1: 4.0}


def test_topic_head_refit_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    acts = rng.random((50, 4))
    w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    head = torch.nn.Linear(4, 3)
    fit_topic_head(head, acts, acts @ w + b, ridge=0.0)
    np.testing.assert_allclose(head.weight.detach().numpy(), w.T, atol=1e-4)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 5)) * 0.1 + np.eye(5)[y] * 3
    assert linear_probe(x[:40], y[:40], x[40:], y[40:]) == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fixture_seed):
    items, val = toy_items(24, seed=fixture_seed), toy_items(8, seed=100 + fixture_seed)
    topics, _ = fit_topics(items.sentences, TopicConfig(num_topics=2, max_iter=10, seed=fixture_seed))
    ex = SemanticExplainer(SemanticConfig(**SMALL))
    ex.fit(items, val, topic_model=topics,
           settings=SemanticTrainConfig(epochs=6, batch_size=8, lr=0.02, seed=fixture_seed))
    ex.label(items, cfg=LabelConfig(top_n=5, margin=0.0))
    path = tmp_path_factory.mktemp("semantic") / "ckpt"
    ex.save(str(path))
    return ex, items, path


def test_training_lowers_the_validation_nll(trained):
    ex, _, _ = trained
    nll = [h["val_nll"] for h in ex.history]
    assert min(nll[1:]) < nll[0]


def test_the_interpretive_loss_makes_the_topic_head_predict_held_out_topics(fixture_seed):
    """L_I trains ŝ towards the clips' LDA topic proportions: on held-out clips ŝ is far closer to their topics than
    predicting the training clips' mean topics, while with λ = 0 (the head gets no gradient) it is no closer. Topics
    with a small document prior (α = 0.1), so the two kinds of clip have distinct proportions (≈ 0.02 vs 0.98);
    the default α = 25 makes every clip's ≈ 0.5/0.5 and any constant would do."""
    items, val = toy_items(24, seed=fixture_seed), toy_items(8, seed=100 + fixture_seed)
    topics, _ = fit_topics(items.sentences, TopicConfig(num_topics=2, max_iter=10, alpha=0.1, seed=fixture_seed))
    s, mean = topics.transform(val.sentences), topics.transform(items.sentences).mean(0)
    baseline = float(((s - mean) ** 2).sum(1).mean())
    err = {}
    for lam in (0.1, 0.0):
        ex = SemanticExplainer(SemanticConfig(**SMALL, interp_weight=lam))
        ex.fit(items, val, topic_model=topics,
               settings=SemanticTrainConfig(epochs=6, batch_size=8, lr=0.02, seed=fixture_seed))
        err[lam] = float(((ex.encode(val.features, val.mask)["s_hat"] - s) ** 2).sum(1).mean())
    # seeds 0-2: λ = 0.1 0.008-0.033, the mean 0.46, λ = 0 0.79-0.96 (squared error summed over topics)
    assert baseline > 0.3 and err[0.1] < 0.25 * baseline and err[0.1] < 0.25 * err[0.0], (err, baseline)


def test_checkpoint_round_trip_gives_the_same_captions_and_labels(trained):
    ex, items, path = trained
    back = SemanticExplainer.load(str(path))
    assert back.caption(items.features[:4], items.mask[:4]) == ex.caption(items.features[:4], items.mask[:4])
    assert [n.label for n in back.neurons] == [n.label for n in ex.neurons]
    np.testing.assert_array_equal(back.topics.topic_word, ex.topics.topic_word)


def test_encoding_does_not_depend_on_batch_size(trained):
    ex, items, _ = trained
    a, b = ex.encode(items.features, items.mask, batch_size=5), ex.encode(items.features, items.mask)
    np.testing.assert_allclose(a["a"], b["a"], atol=1e-5)


def test_explain_returns_captions_and_driving_neurons(trained):
    ex, items, _ = trained
    assert "semantic" in explainer_names() and get_explainer("semantic") is SemanticExplainer
    out = ex.explain({"features": items.features[:3], "mask": items.mask[:3]}, {"top_neurons": 2})
    assert len(out) == 3 and all(isinstance(o.sentence, str) and o.method == "semantic" for o in out)
    assert all(len(o.neurons) <= 2 for o in out)
    for o in out:
        for d, label in o.neurons.items():
            assert ex.neurons[int(d)].label == label and ex.neurons[int(d)].confident
    # an edit through the request parameters is reported back
    alive = [n.neuron for n in ex.neurons if n.top_items]
    edited = ex.explain({"features": items.features[:1]}, {"suppress": [str(alive[0])]})
    assert edited[0].extra["edit"]["suppress"] == [alive[0]]


def test_suppressing_every_live_neuron_changes_the_caption(trained):
    ex, items, _ = trained
    alive = [n.neuron for n in ex.neurons if n.top_items]
    before, after = ex.revise(items.features[:4], items.mask[:4], wrong=[str(d) for d in alive])
    assert before == ex.caption(items.features[:4], items.mask[:4])
    assert len(set(after)) == 1            # nothing of the video is left for the decoder: one caption for all


# Three independent binary factors per video: a colour, a shape and the bird (the class, ``labels``); frame feature
# j (j < 3) is +2 for the first value of factor j and −2 for the second, the other three features are noise.
FACTORS = (("red", "blue"), ("ball", "cube"), ("finch", "wren"))
FACTOR_WORDS = [w for pair in FACTORS for w in pair]


def factor_items(n: int, seed: int) -> tuple[VideoItems, np.ndarray]:
    rng = np.random.default_rng(seed)
    combos = np.array([(c, s, b) for c in range(2) for s in range(2) for b in range(2)])
    values = combos[rng.permutation(n) % len(combos)]           # every combination equally often
    feats = rng.normal(size=(n, K, D)).astype(np.float32) * 0.3
    for j in range(len(FACTORS)):
        feats[:, :, j] += np.where(values[:, j] == 0, 2.0, -2.0)[:, None]
    mask = np.ones((n, K), bool)
    mask[::3, 3:] = False
    feats[~mask] = 0
    words = [[FACTORS[j][v] for j, v in enumerate(row)] for row in values]
    sentences = [[f"a {b} with a {c} {s}", f"the {b} has a {c} {s}"] for c, s, b in words]
    return VideoItems(np.array([f"f{i}" for i in range(n)]), feats, mask, values[:, 2].astype(np.int64),
                      sentences), values


@pytest.fixture(scope="module")
def factor_captioner(fixture_seed):
    """A captioner whose interpretable layer is disentangled by construction — unit j = ReLU(feature_j − 0.5),
    i.e. "the first value of factor j is present" — and frozen; the encoder's LSTM, the topic head and the decoder
    are trained (λ = 1, a topic per word). The human-in-the-loop premise is such a layer; what is tested is the
    rest: prediction-difference labels, word → neuron selection, the edit of a and of every a_i, and decoding."""
    items, values = factor_items(48, fixture_seed)
    val, _ = factor_items(16, 100 + fixture_seed)
    topics = TopicModel(FACTOR_WORDS, np.where(np.eye(len(FACTOR_WORDS)) > 0, 100.0, 0.01), 0.5, 0.01)
    ex = SemanticExplainer(SemanticConfig(**{**SMALL, "interp_dim": len(FACTORS), "interp_weight": 1.0}))
    ex.setup(items, topics, seed=fixture_seed)
    with torch.no_grad():
        ex.model.interp.weight.zero_()
        ex.model.interp.weight[:, :len(FACTORS)] = torch.eye(len(FACTORS))
        ex.model.interp.bias.fill_(-0.5)
    ex.model.interp.requires_grad_(False)
    ex.fit(items, val, settings=SemanticTrainConfig(epochs=20, batch_size=8, lr=0.02, seed=fixture_seed))
    ex.label(items, cfg=LabelConfig(top_n=20))
    return ex, items, values


def content(caption: str) -> set[str]:
    return set(caption.split()) & set(FACTOR_WORDS)


def test_a_word_to_neuron_edit_changes_that_attribute_only(factor_captioner):
    ex, items, values = factor_captioner
    truth = [{FACTORS[j][v] for j, v in enumerate(row)} for row in values]
    assert [content(c) for c in ex.caption(items.features, items.mask)] == truth
    # Each unit gets the word of the value it encodes, confidently.
    assert [(n.label, n.confident) for n in ex.neurons] == [("red", True), ("ball", True), ("finch", True)]
    for j, (first, second) in enumerate(FACTORS):
        assert ex.neurons_for([first]) == [j]
        for value, edit in ((0, {"wrong": [first]}), (1, {"right": [first]})):
            rows = np.flatnonzero(values[:, j] == value)[:8]
            before, after = ex.revise(items.features[rows], items.mask[rows], **edit)
            assert [content(c) for c in before] == [truth[i] for i in rows]
            # The named attribute flips (suppressing "red" makes the ball blue, boosting it makes it red); the
            # other attribute and the bird, the class, stay.
            gone, new = (first, second) if value == 0 else (second, first)
            assert [content(c) for c in after] == [truth[i] - {gone} | {new} for i in rows], (edit, after)


def test_bad_input_is_a_user_error(trained):
    ex, items, _ = trained
    with pytest.raises(UserError, match="values per frame"):
        ex.caption(np.zeros((1, K, D + 1), np.float32))
    with pytest.raises(UserError, match="at least one real frame"):
        ex.caption(items.features[:1], np.zeros((1, K), bool))
    with pytest.raises(UserError, match="does not exist"):
        ex.neurons_for(["999"])
    with pytest.raises(UserError, match="features"):
        ex.explain({"image": np.zeros((1, 3, 8, 8))})
    side = SemanticExplainer(SemanticConfig(**SMALL, decoder_reads="v"))
    side.setup(items, ex.topics)
    with pytest.raises(UserError, match="does not read the interpretable layer"):
        side.caption(items.features[:1], edit=NeuronEdit(suppress=[0]))
