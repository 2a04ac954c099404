"""Caption metrics: equal to a direct pycocoevalcap call, the paper's METEOR protocol, attribute faithfulness,
and bad input. METEOR's Java process starts once for the file, plus once for the (slow-marked) file-mode check."""

import numpy as np
import pytest

from interp_ray.errors import UserError
from interp_ray.metrics.captions import (LABELS, CaptionScorer, attribute_faithfulness, check_pairs, meteor_file_mode,
                                         read_reference_file, score_files)

# Hand-made: capitals, punctuation, a "|||", an exact match, a partial match, an empty hypothesis.
HYPS = ["A red striped circle.", "this is a blue cross because it is dotted", "an image of a yellow square.",
        "", "the small green square, which is solid!"]
REFS = [["a red striped circle.", "This circle is red and striped.", "an image of a striped red circle."],
        ["a blue dotted cross.", "the object is a cross and it is blue and dotted.", "its blue look marks it."],
        ["a small yellow square.", "an image of a yellow square.", "this square is yellow."],
        ["a green thing.", "something", "a solid green square"],
        ["a small green solid square.", "this square is green, small and solid.", "the square is green."]]


@pytest.fixture(scope="module")
def meteor():
    """One METEOR Java process for the file (it takes 10-60 s to start on a busy machine)."""
    from pycocoevalcap.meteor.meteor import Meteor

    m = Meteor()
    yield m
    m.meteor_p.stdin.close()
    m.meteor_p.kill()
    m.meteor_p.wait()


@pytest.fixture(scope="module")
def ours(meteor):
    with CaptionScorer(meteor=meteor) as scorer:
        return scorer.score(HYPS, REFS)


def test_scores_equal_a_direct_pycocoevalcap_call(ours, meteor):
    """Our pipeline vs pycocoevalcap's own API called directly (separate tokenizer runs, as COCOEvalCap does); the
    METEOR Java process is shared, the calls into it are not."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [{"caption": h.replace("|||", " ")}] for i, h in enumerate(HYPS)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor_score, _ = meteor.compute_score(gts, res)
    direct = {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3], "meteor": meteor_score,
              "rouge_l": Rouge().compute_score(gts, res)[0], "cider": Cider().compute_score(gts, res)[0]}
    for key, value in direct.items():
        assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert set(ours) == set(LABELS)
    assert 0 < ours["bleu4"] < ours["bleu1"] < 1 and ours["cider"] > 0


@pytest.mark.slow  # one more JVM: file-mode METEOR, exactly as the paper ran it
def test_segment_mean_meteor_is_the_papers_file_mode_protocol(ours):
    """The paper ran ``meteor-1.5.jar hyp ref -l en -norm -r K`` and averaged the "Segment i score" lines."""
    segments = meteor_file_mode(HYPS, REFS)
    assert segments[0] == pytest.approx(1.0) and segments[3] == 0.0
    assert ours["meteor_segment_mean"] == pytest.approx(float(np.mean(segments)), abs=1e-9)
    assert ours["meteor_segment_mean"] != pytest.approx(ours["meteor"], abs=1e-3)   # a different number indeed


def test_attribute_faithfulness_counts():
    # class 0, alder warbler: circle red striped large; discriminative: circle, red, striped
    sentences = ["a red striped circle.", "a blue circle.", "a large circle with stripes.", "",
                 "two crosses, both solid."]                # class 11: cross blue solid large; disc: cross, solid
    out = attribute_faithfulness(sentences, [0, 0, 0, 0, 11])
    # wanted 4×3 + 2 = 14; named 3 + 2 + 2 + 0 + 2 = 9; hits 3 + 1 + 1 + 0 + 2 = 7; false: "blue" only
    assert out["attributes_wanted"] == 14 and out["attributes_named"] == 9
    assert out["attribute_recall"] == pytest.approx(7 / 14)
    assert out["attribute_false"] == pytest.approx(1 / 9) and out["attribute_precision"] == pytest.approx(8 / 9)
    with pytest.raises(UserError, match="labels"):
        attribute_faithfulness(sentences, [0])


def test_bad_references_are_clear_errors(tmp_path):
    empty, binary, latin = tmp_path / "empty.txt", tmp_path / "refs.bin", tmp_path / "latin.txt"
    empty.write_text("  \n\n")
    binary.write_bytes(b"a red circle\x00\x00\x07")
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a red circle.\na blue cross.\n")
    for path, message in [(empty, "no sentences"), (binary, "not a text file"), (latin, "not a UTF-8 text file"),
                          (tmp_path / "missing.txt", "does not exist")]:
        with pytest.raises(UserError, match=message):
            read_reference_file(path, 1)
    refs = tmp_path / "refs.txt"
    refs.write_text("r1\nr2\nr3\n")
    with pytest.raises(UserError, match="multiple of 2"):
        read_reference_file(refs, 2)
    with pytest.raises(UserError, match="2 sentences but .* references for 3"):
        score_files(hyp, refs, 1)
    with pytest.raises(UserError, match="no reference sentence"):
        check_pairs(["a"], [["", "  "]])
    with pytest.raises(UserError, match="2 hypotheses but 1"):
        check_pairs(["a", "b"], [["a"]])
    with pytest.raises(UserError, match="not one string"):
        check_pairs(["a"], ["a red circle"])
