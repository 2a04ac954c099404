"""Dong et al. (CVPR'17): the semantic captioner with the interpretive loss (λ = 0.1) against the same model without it
(λ = 0), each trained on Ray Train by ``jobs.train_explainer`` (the main job's semantic stage's path) on generated
scene clips, per seed.

Measured per λ: the captioning metrics (both METEOR protocols, BLEU-4, CIDEr-D), the coherence of the interpretable
layer's neurons, a linear probe of that layer, and the targeted-edit correction rate over every wrong test caption.

- **Coherence** (Dong 2) is measured without the neuron labels, since at λ = 0 the topic head they are read through
  is never trained: for each alive neuron of the interpretable layer, its ``top_n`` training clips by activation; its
  purity lift = max over the 13 attribute words of (share of those clips that have the word − share of all training
  clips that do); the figure is the mean over alive neurons (0: no better than chance). The labels' own precision
  (``interp_ray.metrics.semantic.label_precision``) is recorded beside it.
- **Edit rule** (Dong 4): a test caption is wrong when it does not name every discriminative attribute of the clip's
  class or names an attribute value the clip does not have. For each wrong caption the edit suppresses the neurons
  confidently labelled with each wrongly named word and boosts those labelled with the clip's true value of the same
  kind and with each missing discriminative word (``SemanticExplainer.revise``); the caption is corrected when the
  revised caption is right by the same test. The rate is over ALL wrong test captions (no edit possible counts as
  not corrected). The control edits as many random neurons (same numbers suppressed and boosted, seeded).
- **Transfer** (Dong 3): UCF-101 is not here, and scene clips pose no action; their only label outside the caption
  words is the class, so the probe is a logistic regression from the interpretable layer (train clips) to the
  clip's class (test clips). It is a within-domain probe, weaker than the paper's transfer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from interp_ray.reproduction import beyond_spread, fmt_mean_std, mean_std, not_below, verdict
from jobs.reproduce.stages._common import classifier, job_config, row, store_root, values

NAME = "dong"
CLAIMS = ("Dong 1", "Dong 2", "Dong 3", "Dong 4")
LAMBDAS = (0.1, 0.0)
NON_TRIVIAL = 0.10   # Dong 4: "a non-trivial fraction" read as at least 10% of the wrong captions, beyond the spread
# Dong 4 needs this many wrong test captions per seed (on average) for a rate to mean anything: a captioner right on
# 239 of 240 clips (seed 0 at the full config's budget) leaves a rate of 0 or 1 over one caption.
MIN_WRONG = 10


def _key(lam: float) -> str:
    return f"lambda_{lam:g}"


def run(section: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    ckpt, clf = classifier(section.get("classifier") or {}, workdir, f"stages.{NAME}.classifier")
    out: dict[str, Any] = {"frame_cnn": clf}
    for lam in section.get("lambdas", LAMBDAS):
        out[_key(lam)] = measure(section, seed, workdir, ckpt, float(lam))
    return out


def measure(section: dict[str, Any], seed: int, workdir: Path, ckpt: str, lam: float) -> dict[str, Any]:
    from interp_ray.data.video_features import items_from_rows
    from interp_ray.explainers.semantic.config import SemanticTrainJob
    from interp_ray.explainers.semantic.explainer import SemanticExplainer
    from interp_ray.metrics.captions import CaptionScorer
    from interp_ray.metrics.semantic import caption_faithfulness, label_precision
    from jobs.train_explainer import role_stores, train, train_local

    model_dir = workdir / _key(lam)
    job = job_config(section, SemanticTrainJob, f"stages.{NAME}", source__checkpoint=ckpt,
                     source__store__root=store_root(workdir), output=str(model_dir),
                     run__storage_path=str(workdir / "runs"), run__name=f"dong-seed{seed}-{_key(lam)}",
                     explainer__interp_weight=lam, train__seed=seed, topics__seed=seed)
    if not (model_dir / "config.json").is_file():   # a rerun after a kill keeps a finished λ
        # trainer: ray (the job's Ray Train path, the default) or local (the same trainer in this process: smoke)
        (train_local if section.get("trainer", "ray") == "local" else train)(job)
    ex = SemanticExplainer.load(str(model_dir))
    stores = role_stores(job, ("train", "test"))
    items = {role: items_from_rows(store.iter_batches(256), job.frame_column) for role, store in stores.items()}
    train_items, test = items["train"], items["test"]
    captions = ex.caption(test.features, test.mask)
    with CaptionScorer() as scorer:
        scores = scorer.score(captions, test.sentences)
    precision = label_precision(ex, train_items)
    top_n = int(section.get("purity_top_n", 20))
    return {"scores": {k: scores[k] for k in ("meteor_segment_mean", "meteor", "bleu4", "cider") if k in scores},
            "faithful_captions": caption_faithfulness(captions, test),
            "label_precision": {k: v for k, v in precision.items() if k != "labels"},
            "purity": purity(ex.encode(train_items.features, train_items.mask)["a"], train_items, top_n),
            "probe_accuracy": probe(ex, train_items, test, seed),
            "edits": edits(ex, test, captions, seed), "test_clips": len(test), "train_clips": len(train_items),
            "epochs": job.train.epochs}


def _has_words(items) -> np.ndarray:
    """N × 13: which attribute words each clip has."""
    from interp_ray.data.scenes import ATTRIBUTE_VOCAB
    from interp_ray.metrics.semantic import clip_attributes

    words = list(ATTRIBUTE_VOCAB)
    return np.array([[w in set(a.values()) for w in words] for a in clip_attributes(items)], dtype=np.float64)


def purity(acts: np.ndarray, items, top_n: int) -> dict[str, float]:
    """The mean purity lift of the alive neurons (module docstring)."""
    has = _has_words(items)
    base = has.mean(0)
    alive = [d for d in range(acts.shape[1]) if acts[:, d].std() > 1e-6]
    lifts = []
    for d in alive:
        top = np.argsort(-acts[:, d], kind="stable")[:top_n]
        lifts.append(float((has[top].mean(0) - base).max()))
    return {"lift": float(np.mean(lifts)) if lifts else 0.0, "alive": len(alive), "neurons": int(acts.shape[1])}


def probe(ex, train_items, test, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a_train = ex.encode(train_items.features, train_items.mask)["a"]
    a_test = ex.encode(test.features, test.mask)["a"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(a_train, train_items.labels)
    return float((clf.predict(a_test) == test.labels).mean())


def _right(caption: str, label: int, attrs: dict[str, str]) -> bool:
    from interp_ray.data.scenes import attribute_mentions, discriminative_attributes

    named = attribute_mentions(caption)
    return set(discriminative_attributes(label)) <= named and named <= set(attrs.values())


def edits(ex, test, captions: list[str], seed: int) -> dict[str, Any]:
    """Dong 4's correction rate over every wrong test caption, targeted and random-control (module docstring)."""
    from interp_ray.data.scenes import ATTRIBUTE_VOCAB, attribute_mentions, discriminative_attributes
    from interp_ray.metrics.semantic import clip_attributes

    rng = np.random.default_rng(seed)
    attrs = clip_attributes(test)
    wrong = [i for i, c in enumerate(captions) if not _right(c, int(test.labels[i]), attrs[i])]
    fixed = control = applicable = 0
    examples = []
    for i in wrong:
        truth, label = attrs[i], int(test.labels[i])
        named = attribute_mentions(captions[i])
        bad = sorted(named - set(truth.values()))
        good = sorted({truth[ATTRIBUTE_VOCAB[w]] for w in bad} | (set(discriminative_attributes(label)) - named))
        edit = ex.make_edit(bad, good)
        feats, mask = test.features[i:i + 1], test.mask[i:i + 1]
        n_sup, n_boost = len(edit.suppress), len(edit.boost)
        if n_sup + n_boost == 0:
            continue   # no neuron carries the words: counted as not corrected
        applicable += 1
        _, after = ex.revise(feats, mask, wrong=bad, right=good)
        ok = _right(after[0], label, truth)
        fixed += ok
        if len(examples) < 3:
            examples.append({"id": str(test.ids[i]), "suppress": bad, "boost": good, "before": captions[i],
                             "after": after[0], "corrected": bool(ok)})
        ids = rng.permutation(ex.config.interp_dim)[:n_sup + n_boost]
        rand = ex.make_edit([str(d) for d in ids[:n_sup]], [str(d) for d in ids[n_sup:]])
        control += _right(ex.caption(feats, mask, edit=rand)[0], label, truth)
    n = len(wrong)
    return {"wrong": n, "applicable": applicable, "corrected": fixed, "control_corrected": control,
            "rate": fixed / n if n else None, "control_rate": control / n if n else None, "examples": examples}


def rows(per_seed: dict[int, dict[str, Any]], section: dict[str, Any]) -> list[dict[str, Any]]:
    on, off = _key(0.1), _key(0.0)
    first = per_seed[min(per_seed)]
    if on not in first or off not in first:
        return [row(c, "—", "—", "—", "not tested", "this config does not train both λ = 0.1 and λ = 0")
                for c in CLAIMS]
    a = first[on]
    budget = (f"generated scene clips ({a['train_clips']} train / {a['test_clips']} test), {a['epochs']} epochs, "
              f"a small captioner (paper: MSVD 1200/100/670, 100 LDA topics, GoogLeNet frames, full model size); the "
              f"frame CNN is one scenes CNN for every seed")
    out = []
    # Dong 1: not degraded = λ = 0.1 not below λ = 0 beyond the seeds' spread, on both METEOR protocols and CIDEr-D.
    metrics = {"meteor_segment_mean": "METEOR (segment mean)", "meteor": "METEOR (coco)", "cider": "CIDEr-D"}
    cells, ok = [], True
    for k, label in metrics.items():
        x, y = values(per_seed, on, "scores", k), values(per_seed, off, "scores", k)
        if x and y:
            cells.append(f"{label} {fmt_mean_std(x, pct=True)} vs {fmt_mean_std(y, pct=True)}")
            ok &= not_below(x, y)
    out.append(row("Dong 1", "the interpretive loss (λ = 0.1) does not degrade captioning against λ = 0",
                   "not degraded (MSVD; figures not retrieved)", "; ".join(cells) + " (λ = 0.1 vs λ = 0)",
                   verdict(ok), "met when no metric of λ = 0.1 falls below λ = 0's beyond the seeds' spread. "
                   + budget + "."))
    x, y = values(per_seed, on, "purity", "lift"), values(per_seed, off, "purity", "lift")
    px, py = values(per_seed, on, "label_precision", "share"), values(per_seed, off, "label_precision", "share")
    out.append(row("Dong 2", "neurons of the supervised layer are more coherent at λ = 0.1 than at λ = 0",
                   "coherent word/topic labels (qualitative)",
                   f"purity lift {fmt_mean_std(x)} vs {fmt_mean_std(y)}; confident labels present in their top clips "
                   f"{fmt_mean_std(px, pct=True) if px else '–'} vs {fmt_mean_std(py, pct=True) if py else '–'}",
                   verdict(beyond_spread(x, y)),
                   f"met when λ = 0.1's purity lift beats λ = 0's beyond the seeds' spread; purity lift = mean over "
                   f"alive neurons of max over attribute words of (share among the neuron's "
                   f"{section.get('purity_top_n', 20)} top training clips − share among all), label-free because "
                   f"λ = 0 never trains the topic head the labels are read through. {budget}."))
    x, y = values(per_seed, on, "probe_accuracy"), values(per_seed, off, "probe_accuracy")
    out.append(row("Dong 3", "features trained with the loss transfer at least as well (linear probe)",
                   "UCF-101 linear probe, not below λ = 0",
                   f"class probe {fmt_mean_std(x, pct=True)} vs {fmt_mean_std(y, pct=True)} (λ = 0.1 vs λ = 0)",
                   verdict(not_below(x, y)),
                   "no UCF-101 here, and scene clips pose no action: the probe is a logistic regression from the "
                   "interpretable layer to the clip's class (train → test clips), a within-domain stand-in for the "
                   "paper's transfer; met when λ = 0.1 is not below λ = 0 beyond the seeds' spread"))
    rates = values(per_seed, on, "edits", "rate")
    controls = values(per_seed, on, "edits", "control_rate")
    wrong = values(per_seed, on, "edits", "wrong")
    applicable = values(per_seed, on, "edits", "applicable")
    if not rates or mean_std(wrong)[0] < MIN_WRONG:
        shown = (f"{fmt_mean_std(rates, pct=True)} of {fmt_mean_std(wrong, digits=0)} wrong test captions corrected"
                 if rates else "no wrong test caption in any seed")
        out.append(row("Dong 4", "editing the identified neurons corrects a non-trivial fraction of wrong captions",
                       "a non-trivial fraction (MSVD; no figure)", shown, "not tested",
                       f"fewer than {MIN_WRONG} wrong test captions per seed: the captioner is right on nearly every "
                       f"test clip, so a correction rate over so few says nothing (more test clips: source.rows.test)"))
    else:
        mean, std = mean_std(rates)
        out.append(row("Dong 4", "editing the identified neurons corrects a non-trivial fraction of wrong captions",
                       "a non-trivial fraction (MSVD; no figure)",
                       f"{fmt_mean_std(rates, pct=True)} of {fmt_mean_std(wrong, digits=0)} wrong test captions "
                       f"corrected (an edit applied to {fmt_mean_std(applicable, digits=0)}); random-neuron control "
                       f"{fmt_mean_std(controls, pct=True)}",
                       verdict(mean - std >= NON_TRIVIAL and beyond_spread(rates, controls)),
                       f"over ALL wrong test captions of λ = 0.1 (wrong: misses a discriminative attribute or names "
                       f"one the clip lacks); edit: suppress the neurons confidently labelled with each wrong word, "
                       f"boost those labelled with the true value of its kind and each missing word; corrected when "
                       f"the revised caption is right; met when the rate is ≥ {NON_TRIVIAL:.0%} beyond its spread and "
                       f"beats the same-size random-neuron edit beyond the spread. {budget}."))
    return out
