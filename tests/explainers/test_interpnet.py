"""InterpNET without Ray: introspection vector, frozen classifier, loss, decoding, checkpoints, bad input.

The data are synthetic activation tables: 12 scene classes whose 16-d features are noisy class centres, with the
scenes generator's real reference sentences, so a tiny model learns in seconds.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from interp_ray.data.scenes import make_sentences
from interp_ray.errors import UserError
from interp_ray.explainers.base import get_explainer
from interp_ray.explainers.interpnet.config import ClassifierTrainConfig, DecoderTrainConfig
from interp_ray.explainers.interpnet.decoding import beam_decode, greedy_decode, length_normaliser
from interp_ray.explainers.interpnet.explainer import InterpNET
from interp_ray.explainers.interpnet.networks import LRCN2f, sentence_loss
from interp_ray.explainers.interpnet.tables import ActivationTable, collect
from interp_ray.explainers.interpnet.training import state_digest
from interp_ray.metrics.captions import attribute_faithfulness
from interp_ray.text import Vocabulary, detokenize, tokenize

DIM = 16
SMALL = {"feature_layer": "feat", "embed_dim": 24, "hidden_dim": 48, "max_len": 24, "hidden": [24, 16]}


def synthetic(n: int, seed: int, k: int = 3) -> ActivationTable:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(12, DIM))
    labels = np.arange(n) % 12
    feats = (centres[labels] + 0.35 * rng.normal(size=(n, DIM))).astype(np.float32)
    sentences = [make_sentences(int(c), rng, k) for c in labels]
    return ActivationTable(np.array([f"row{seed}-{i}" for i in range(n)]), labels.astype(np.int64),
                           {"feat": feats}, sentences)


def as_batches(t: ActivationTable, size: int):
    for lo in range(0, len(t), size):
        yield {"id": t.ids[lo:lo + size], "label": t.labels[lo:lo + size], "feat": t.columns["feat"][lo:lo + size],
               "sentences": np.array(t.sentences[lo:lo + size], dtype=str)}


# Small LSTMs on a shared 2-core box: one torch thread for the whole module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("pinned_torch_threads")


@pytest.fixture(scope="module")
def trained(pinned_torch_threads, fixture_seed):
    """interpnet_2 (small sizes) trained in stages, with the classifier's digest taken between them."""
    torch.manual_seed(fixture_seed)
    base = 3 * fixture_seed   # new draws of the three splits (and of the model) for each fixture seed
    train, val, test = synthetic(360, base), synthetic(96, base + 1), synthetic(48, base + 2)
    ex = InterpNET({**SMALL, "variant": "interpnet_2"}, class_names=[f"c{i}" for i in range(12)])
    ex.fit_classifier(as_batches(train, 100), val, ClassifierTrainConfig(epochs=15))
    head_before = state_digest(ex.head.state_dict())
    decoder_before = state_digest(ex.decoder.state_dict())
    ex.fit(as_batches(train, 100), val, train=DecoderTrainConfig(epochs=15, batch_size=32, lr=6e-3))
    return {"ex": ex, "test": test, "head_before": head_before, "decoder_before": decoder_before}


def test_classifier_weights_bit_identical_after_explainer_training(trained):
    ex = trained["ex"]
    assert state_digest(ex.head.state_dict()) == trained["head_before"]
    assert state_digest(ex.decoder.state_dict()) != trained["decoder_before"]   # the explainer did train
    assert len(ex.history["explainer"]) == 15
    assert not any(p.requires_grad for p in ex.head.parameters())
    r, _ = ex.introspect(trained["test"])
    assert r.grad_fn is None and not r.requires_grad                              # stop-gradient at r(x)


def test_image_model_unchanged_by_extraction_and_training(tmp_path):
    """Extraction (ActivationExtractor) reads a real checkpoint; its weights file is the same bytes afterwards."""
    from interp_ray.activations import ActivationExtractor
    from interp_ray.checkpoint import load_classifier, save_classifier
    from interp_ray.data.scenes import load_scenes
    from interp_ray.models import build_model

    torch.manual_seed(0)
    opts = {"num_classes": 12, "in_channels": 3, "image_size": 32, "width": 4, "hidden": 8}
    save_classifier(tmp_path / "cnn", build_model("scenes_cnn", **opts), model_name="scenes_cnn",
                    model_options=opts, class_names=[str(i) for i in range(12)])
    before = (tmp_path / "cnn" / "weights.safetensors").read_bytes()
    ds = load_scenes("train", n=36, size=32)
    ex = InterpNET({**SMALL, "feature_layer": "relu2", "variant": "interpnet_1", "hidden": [8]})
    extractor = ActivationExtractor(str(tmp_path / "cnn"), ["relu2"], passthrough=("sentences",))
    table = collect((extractor(b) for b in ds.iter_batches(12)), ["relu2"])
    assert table.columns["relu2"].shape == (36, 8) and len(table.sentences) == 36   # mean-pooled conv map
    ex.fit(table, table, classifier_train=ClassifierTrainConfig(epochs=1), train=DecoderTrainConfig(epochs=1))
    assert (tmp_path / "cnn" / "weights.safetensors").read_bytes() == before
    assert load_classifier(tmp_path / "cnn").digest


def test_learns_to_name_the_discriminative_attributes(trained):
    ex, test = trained["ex"], trained["test"]
    out = ex.explain({"feat": test.columns["feat"], "id": test.ids})
    assert [e.label for e in out] == ex.predict(test).tolist()
    faith = attribute_faithfulness([e.sentence for e in out], test.labels)
    assert faith["attribute_recall"] >= 0.8 and faith["attribute_false"] <= 0.1, faith
    assert all(e.method == "interpnet" and e.label_name == f"c{e.label}" for e in out)


def test_beam_width_one_is_greedy_and_batches_equal_single_items(trained):
    ex, test = trained["ex"], trained["test"]
    r, _ = ex.introspect(test)
    greedy, g_scores = ex.generate(r, beam_width=1)
    kw = dict(max_len=ex.config.max_len, start=ex.vocab.start, end=ex.vocab.end)
    beam1, b_scores = beam_decode(ex.decoder, r, beam_width=1, **kw)
    assert [ex.vocab.decode(s + [ex.vocab.end]) for s in beam1] == greedy
    np.testing.assert_allclose(b_scores, g_scores, rtol=1e-6)
    beam3, _ = ex.generate(r, beam_width=3)
    for i in range(0, len(test), 5):
        assert ex.generate(r[i:i + 1])[0] == [greedy[i]]
        assert ex.generate(r[i:i + 1], beam_width=3)[0] == [beam3[i]]


def test_beam_search_matches_exhaustive_search_when_wide_enough():
    torch.manual_seed(3)
    dec = LRCN2f(6, 4, embed_dim=5, hidden_dim=7, dropout=0.0).eval()
    r = torch.randn(3, 4)
    end, alpha = 1, 0.7
    seqs, _ = beam_decode(dec, r, beam_width=32, max_len=2, start=0, end=end, alpha=alpha)  # keeps all 30 prefixes
    for i in range(3):
        rp = dec.project_r(r[i:i + 1])
        lp1, s1, s2 = dec.step(torch.tensor([0]), rp, None, None)
        candidates = {(): lp1[0, end].item() / length_normaliser(1, alpha)}
        for w in range(6):
            if w == end:
                continue
            lp2, _, _ = dec.step(torch.tensor([w]), rp, s1, s2)
            candidates[(w,)] = (lp1[0, w] + lp2[0, end]).item() / length_normaliser(2, alpha)
        best = max(candidates, key=candidates.get)
        assert tuple(seqs[i]) == best


def test_introspection_vector_per_variant():
    train = synthetic(120, 5)
    dims = {}
    for variant in ("captioning", "interpnet_0", "interpnet_1", "interpnet_2", "interpnet_3"):
        ex = InterpNET({**SMALL, "variant": variant, "hidden": None}).setup(train)
        r, probs = ex.introspect(train)
        dims[variant] = r.shape[1]
        h0 = (torch.as_tensor(train.columns["feat"]) - ex.head.mean) / ex.head.std
        if variant == "captioning":
            torch.testing.assert_close(r, h0)
        elif variant == "interpnet_0":
            torch.testing.assert_close(r, torch.softmax(ex.head(torch.as_tensor(train.columns["feat"])), 1))
        else:
            torch.testing.assert_close(r[:, :DIM], h0)
            torch.testing.assert_close(r[:, -12:], probs)
        assert r.shape[1] == ex.r_dim == ex.decoder.r_dim
    assert dims == {"captioning": DIM, "interpnet_0": 12, "interpnet_1": DIM + 500 + 12,
                    "interpnet_2": DIM + 800 + 12, "interpnet_3": DIM + 1000 + 12}


def test_store_mode_reads_the_models_own_taps():
    train = synthetic(60, 6)
    rng = np.random.default_rng(0)
    train.columns["fc"] = rng.random((60, 5)).astype(np.float32)
    probs = rng.dirichlet(np.ones(12), 60).astype(np.float32)
    train.columns["probabilities"] = probs
    ex = InterpNET({**SMALL, "hidden": None, "classifier": "store", "layers": ["fc"]}).setup(train)
    r, p = ex.introspect(train)
    assert r.shape[1] == DIM + 5 + 12 and ex.head is None
    np.testing.assert_array_equal(r[:, DIM:DIM + 5].numpy(), train.columns["fc"])
    np.testing.assert_array_equal(p.numpy(), probs)
    np.testing.assert_array_equal(ex.predict(train), probs.argmax(1))


def test_sentence_loss_is_the_mean_of_per_sentence_token_means():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[3, 4, 1, 2], [5, 1, 2, 2]])
    lengths = torch.tensor([3, 2])
    logp = torch.log_softmax(logits, -1)
    want = (-(logp[0, 0, 3] + logp[0, 1, 4] + logp[0, 2, 1]) / 3 - (logp[1, 0, 5] + logp[1, 1, 1]) / 2) / 2
    torch.testing.assert_close(sentence_loss(logits, targets, lengths), want)
    logits[1, 2:] = 100.0  # padding positions do not count
    torch.testing.assert_close(sentence_loss(logits, targets, lengths), want)


def test_save_load_roundtrip_and_vocabulary_checks(trained, tmp_path):
    ex, test = trained["ex"], trained["test"]
    path = tmp_path / "interpnet"
    ex.save(str(path))
    again = get_explainer("interpnet").load(str(path))
    r, _ = ex.introspect(test)
    assert again.generate(again.introspect(test)[0])[0] == ex.generate(r)[0]
    assert state_digest(again.head.state_dict()) == trained["head_before"]

    bad = tmp_path / "bad_vocab"
    shutil.copytree(path, bad)
    vocab = json.loads((bad / "vocab.json").read_text())
    vocab["tokens"].append("zebra")
    (bad / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="vocabulary mismatch"):
        InterpNET.load(str(bad))
    vocab = json.loads((path / "vocab.json").read_text())
    vocab["tokens"][-1] = "zebra"                                   # same size, another word
    (bad / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="vocabulary mismatch"):
        InterpNET.load(str(bad))

    other = synthetic(24, 9)
    other.sentences = [["a purple hexagon with feathers and a beak"] * 2 for _ in range(24)]
    with pytest.raises(UserError, match="vocabulary mismatch"):
        again.setup(other)  # continuing training on other text


def test_bad_activation_input_is_a_clear_error(trained):
    ex, test = trained["ex"], trained["test"]
    with pytest.raises(UserError, match="lacks column"):
        ex.explain({"other": test.columns["feat"]})
    with pytest.raises(UserError, match="trained on 16"):
        ex.explain({"feat": np.zeros((2, 9), dtype=np.float32)})
    with pytest.raises(UserError, match="not trained"):
        InterpNET(SMALL).explain({"feat": test.columns["feat"]})
    with pytest.raises(UserError, match="beam_width"):
        ex.explain({"feat": test.columns["feat"][:1]}, {"beam_width": 0})
    no_text = synthetic(24, 3)
    no_text.sentences = None
    with pytest.raises(UserError, match="sentences"):
        InterpNET(SMALL).fit(no_text)
    with pytest.raises(UserError, match="interpnet config"):
        InterpNET({"variant": "interpnet_9"})


def test_tokenizer_and_vocabulary():
    s = "this is an alder warbler: a circle that is striped, red and large."
    assert tokenize(s) == ["this", "is", "an", "alder", "warbler", ":", "a", "circle", "that", "is", "striped", ",",
                           "red", "and", "large", "."]
    assert detokenize(tokenize(s)) == s
    v = Vocabulary.build(["b a a.", "c a"])
    assert v.tokens == ("<start>", "<end>", "<pad>", "<unk>", "a", ".", "b", "c")   # by count, then alphabetical
    assert v.encode("a zebra.") == [4, v.unk, 5]
    assert v.decode([6, 4, 5, v.end, 7]) == "b a."
    assert Vocabulary.from_json(v.to_json()) == v
    with pytest.raises(UserError, match="tokenizer version"):
        Vocabulary.from_json(v.to_json().replace('"version": 1', '"version": 0'))
    assert math.isclose(length_normaliser(1, 0.7), 1.0)


def test_greedy_stops_at_end_and_respects_max_len():
    torch.manual_seed(1)
    dec = LRCN2f(8, 3, embed_dim=4, hidden_dim=6, dropout=0.0).eval()
    with torch.no_grad():
        dec.out.bias.fill_(-10.0)
        dec.out.bias[5] = 10.0        # always word 5 …
    seqs, _ = greedy_decode(dec, torch.zeros(2, 3), max_len=4, start=0, end=1)
    assert seqs == [[5, 5, 5, 5], [5, 5, 5, 5]]
    with torch.no_grad():
        dec.out.bias[1] = 20.0        # … unless the end token wins
    seqs, _ = greedy_decode(dec, torch.zeros(2, 3), max_len=4, start=0, end=1)
    assert seqs == [[], []]


def test_r_enters_the_second_lstm_and_training_matches_decoding():
    torch.manual_seed(2)
    dec = LRCN2f(9, 5, embed_dim=4, hidden_dim=6, dropout=0.5).eval()
    assert dec.lstm1.input_size == 4 and dec.proj.in_features == 6 + 5 and dec.lstm2.input_size == 6
    tokens, r = torch.tensor([[0, 4, 7, 5], [0, 8, 8, 6]]), torch.randn(2, 5)
    logits = dec(tokens, r)  # teacher forcing, as in training (eval mode: no dropout)
    rp, s1, s2 = dec.project_r(r), None, None
    for t in range(tokens.shape[1]):
        logp, s1, s2 = dec.step(tokens[:, t], rp, s1, s2)
        torch.testing.assert_close(logp, torch.log_softmax(logits[:, t], -1), rtol=1e-5, atol=1e-5)
    seen = []
    handle = dec.lstm1.register_forward_hook(lambda m, i, o: seen.append(o[0].detach().clone()))
    other = dec(tokens, torch.randn(2, 5))
    dec(tokens, r)
    handle.remove()
    torch.testing.assert_close(seen[0], seen[1])          # layer 1 never sees r …
    assert not torch.allclose(other, logits)              # … the output does
