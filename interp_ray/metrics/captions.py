"""Caption metrics through pycocoevalcap, the InterpNET METEOR protocol, and attribute faithfulness for scenes.

``CaptionScorer`` runs the coco-caption pipeline exactly as ``pycocoevalcap`` does — Stanford PTB tokenisation
(lower-case, punctuation removed), then BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr — and adds a second METEOR number
with the protocol of the InterpNET paper. Every number is a fraction in [0, 1] (CIDEr: [0, 10]); tables multiply
by 100. Keys and what they are (``LABELS``):

``bleu1`` … ``bleu4``   coco-caption BLEU-n (corpus level, the "closest" reference length)
``meteor``              coco-caption METEOR: ``meteor-1.5.jar - - -stdio -l en -norm`` on PTB-tokenised text, the
                        corpus score of the jar's EVAL line (the protocol of GVE, Hendricks et al. 2016)
``meteor_segment_mean`` the InterpNET paper's protocol: the *mean of the per-sentence* METEOR scores of the same jar
                        with ``-l en -norm`` on the raw sentences (the paper ran it in file mode with ``-r 10`` and
                        averaged the "Segment … score" lines); see ``meteor_file_mode`` for that exact call
``rouge_l``             coco-caption ROUGE-L (F with β = 1.2)
``cider``               coco-caption CIDEr — which is CIDEr-D (clipped n-gram counts, Gaussian length penalty σ = 6,
                        ×10), with document frequencies from these references

METEOR's Java process takes ~10 s to start: make one ``CaptionScorer`` per evaluation (it is a context manager) and
score every system with it. The PTB tokeniser writes temp files in its installed package folder (must be writable).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from interp_ray.errors import UserError
from interp_ray.text import read_sentence_file

LABELS: dict[str, str] = {
    "bleu1": "BLEU-1 (coco-caption)",
    "bleu2": "BLEU-2 (coco-caption)",
    "bleu3": "BLEU-3 (coco-caption)",
    "bleu4": "BLEU-4 (coco-caption)",
    "meteor": "METEOR (coco-caption corpus score)",
    "meteor_segment_mean": "METEOR (InterpNET protocol: mean of sentence scores)",
    "rouge_l": "ROUGE-L (coco-caption)",
    "cider": "CIDEr-D (coco-caption 'CIDEr')",
}
METEOR_JAR = "meteor-1.5.jar"


def check_pairs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Validate one hypothesis per item and at least one non-blank reference each; returns the cleaned references."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise UserError("hypotheses and references must be sequences of sentences, not one string")
    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not len(hypotheses):
        raise UserError("nothing to score: no hypotheses")
    cleaned = []
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hyp, str):
            raise UserError(f"hypothesis {i} is a {type(hyp).__name__}, not text")
        if isinstance(refs, str):
            raise UserError(f"references of item {i} must be a list of sentences, not one string")
        good = [str(r).strip() for r in refs if str(r).strip()]
        if not good:
            raise UserError(f"item {i} has no reference sentence")
        cleaned.append(good)
    return cleaned


def _single_line(s: str) -> str:
    # The METEOR jar separates fields with "|||" and the tokenizer works line by line.
    return " ".join(str(s).replace("|||", " ").split())


class CaptionScorer:
    """The coco-caption scorers with one METEOR process shared by every ``score`` call. Close it (or use ``with``)."""

    def __init__(self, *, meteor: "bool | Any" = True):
        """``meteor``: True starts a METEOR process (closed by ``close``), False skips METEOR, or pass a running
        ``pycocoevalcap.meteor.meteor.Meteor`` to share it (it is left open)."""
        self._meteor, self._own_meteor = None, False
        if meteor is True:
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor, self._own_meteor = Meteor(), True
        elif meteor:
            self._meteor = meteor

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        m, self._meteor = self._meteor, None
        if m is not None and self._own_meteor:
            with m.lock:
                m.meteor_p.stdin.close()
                m.meteor_p.kill()
                m.meteor_p.wait()

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """Corpus scores of ``hypotheses[i]`` against ``references[i]`` (see the module docstring for each key)."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        refs = check_pairs(hypotheses, references)
        hyps = [_single_line(h) for h in hypotheses]
        refs = [[_single_line(r) for r in rs] for rs in refs]
        # One tokenizer run for references and hypotheses (it works line by line, so this equals two runs).
        both = {**{("ref", i): [{"caption": r} for r in rs] for i, rs in enumerate(refs)},
                **{("hyp", i): [{"caption": h}] for i, h in enumerate(hyps)}}
        tokens = PTBTokenizer().tokenize(both)
        gts_t = {i: tokens[("ref", i)] for i in range(len(refs))}
        # An empty hypothesis on the last line(s) can come back with no line at all: it is still an empty sentence.
        res_t = {i: tokens.get(("hyp", i), [""]) for i in range(len(hyps))}
        out: dict[str, float] = {}
        bleu, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
        out.update({f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
        if self._meteor is not None:
            out["meteor"] = float(self._meteor.compute_score(gts_t, res_t)[0])
            raw_refs = {i: [r.lower() for r in rs] for i, rs in enumerate(refs)}
            raw_hyps = {i: [h.lower()] for i, h in enumerate(hyps)}
            _, segments = self._meteor.compute_score(raw_refs, raw_hyps)
            out["meteor_segment_mean"] = float(np.mean(segments))
        out["rouge_l"] = float(Rouge().compute_score(gts_t, res_t)[0])
        out["cider"] = float(Cider().compute_score(gts_t, res_t)[0])
        return out


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *,
                   meteor: bool = True) -> dict[str, float]:
    """One-off scoring (starts and stops its own METEOR process)."""
    with CaptionScorer(meteor=meteor) as scorer:
        return scorer.score(hypotheses, references)


def meteor_file_mode(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-sentence METEOR exactly as the InterpNET paper ran it: ``java -jar meteor-1.5.jar hyp.txt ref.txt -l en
    -norm -r K`` (K references per sentence, consecutive lines), parsing the "Segment i score:" lines. Every item must
    have the same number of references. Slow (one JVM per call): for checks, not for evaluation."""
    import pycocoevalcap.meteor.meteor as meteor_module

    refs = check_pairs(hypotheses, references)
    k = len(refs[0])
    if any(len(r) != k for r in refs):
        raise UserError("file-mode METEOR needs the same number of references for every sentence")
    jar = Path(meteor_module.__file__).parent / METEOR_JAR
    with tempfile.TemporaryDirectory(prefix="interp-ray-meteor-") as d:
        hyp_file, ref_file = Path(d) / "hyp.txt", Path(d) / "ref.txt"
        hyp_file.write_text("\n".join(_single_line(h).lower() for h in hypotheses) + "\n")
        ref_file.write_text("\n".join(_single_line(r).lower() for rs in refs for r in rs) + "\n")
        proc = subprocess.run(["java", "-Xmx2G", "-jar", str(jar), str(hyp_file), str(ref_file), "-l", "en", "-norm",
                               "-r", str(k)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"METEOR failed: {proc.stderr.strip()[-500:]}")
    scores = {int(m.group(1)): float(m.group(2))
              for m in re.finditer(r"^Segment (\d+) score:\s*([0-9.eE+-]+)", proc.stdout, re.M)}
    return [scores[i + 1] for i in range(len(hypotheses))]


# --- files -------------------------------------------------------------------------------------------------------

def read_reference_file(path: str | Path, refs_per_sentence: int) -> list[list[str]]:
    """References in the METEOR ``-r K`` layout: K consecutive lines per hypothesis (blank lines = missing)."""
    if refs_per_sentence < 1:
        raise UserError(f"refs_per_sentence must be at least 1, got {refs_per_sentence}")
    lines = read_sentence_file(path)
    if len(lines) % refs_per_sentence:
        raise UserError(f"{path}: {len(lines)} lines is not a multiple of {refs_per_sentence} references per sentence")
    return [lines[i:i + refs_per_sentence] for i in range(0, len(lines), refs_per_sentence)]


def score_files(hypothesis_file: str | Path, reference_file: str | Path, refs_per_sentence: int, *,
                scorer: CaptionScorer | None = None) -> dict[str, float]:
    """Score a file of generated sentences (one a line) against a reference file in the ``-r K`` layout."""
    hyps = read_sentence_file(hypothesis_file)
    refs = read_reference_file(reference_file, refs_per_sentence)
    if len(hyps) != len(refs):
        raise UserError(f"{hypothesis_file} has {len(hyps)} sentences but {reference_file} holds references for "
                        f"{len(refs)} ({refs_per_sentence} a sentence)")
    if scorer is not None:
        return scorer.score(hyps, refs)
    return caption_scores(hyps, refs)


# --- attribute faithfulness (generated scenes) ---------------------------------------------------------------------

def attribute_faithfulness(sentences: Sequence[str], labels: Iterable[int], *,
                           discriminative: Callable[[int], list[str]] | None = None,
                           true_attributes: Callable[[int], Iterable[str]] | None = None,
                           mentions: Callable[[str], set[str]] | None = None) -> dict[str, float]:
    """How faithfully sentences name the attributes of the true class (defaults: the generated scenes' ground truth).

    ``attribute_recall``   share of the true discriminative attributes (over all sentences) that the sentence names
    ``attribute_false``    share of the attributes a sentence names that the object does not have
    ``attribute_precision`` = 1 − attribute_false
    Micro-averaged: sums over all sentences, then divides. A sentence naming nothing adds to neither share's numerator.
    """
    from interp_ray.data import scenes

    discriminative = discriminative or scenes.discriminative_attributes
    true_attributes = true_attributes or (lambda c: scenes.class_attributes(c).values())
    mentions = mentions or scenes.attribute_mentions
    labels = [int(x) for x in labels]
    if len(labels) != len(sentences):
        raise UserError(f"{len(sentences)} sentences but {len(labels)} labels")
    wanted = hit = named = false = 0
    for sentence, label in zip(sentences, labels):
        said = mentions(sentence)
        disc = set(discriminative(label))
        wanted += len(disc)
        hit += len(disc & said)
        named += len(said)
        false += len(said - set(true_attributes(label)))
    false_share = false / named if named else 0.0
    return {"attribute_recall": hit / wanted if wanted else 0.0, "attribute_false": false_share,
            "attribute_precision": 1.0 - false_share, "attributes_named": named, "attributes_wanted": wanted}
