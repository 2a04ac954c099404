"""Dong et al. (issue #8) acceptance on generated scene clips, λ = 0.1 against λ = 0 with the same budget.

    python -m benchmarks.semantic_eval [--train 1200 --epochs 10 --lambdas 0.1,0 --json outputs/semantic_eval.json]

Both captioners share everything but λ: the clips and their frame features (scenes CNN ``gap`` per frame), the LDA
topics, the vocabulary, the initial weights (same seed), the epochs and batches. Trained in this process with the
same ``CaptionTrainer`` a Ray Train worker runs (jobs/train_explainer.py) (no Ray: the budget is one core). For each λ
it measures

(a) caption quality on the test clips: coco-caption METEOR (and BLEU-4, CIDEr), plus the share of captions that
    name every true discriminative attribute and no wrong attribute;
(b) neuron labels: prediction-difference labels restricted to the attribute words; the share of confidently labelled
    neurons whose label is an attribute of at least half of their top-activating training clips (V_d). The λ = 0
    model's topic head never received a gradient, so it is refitted by ridge regression on its frozen activations
    first (otherwise its labels would measure a random head, not its features);
(c) planted errors: on test clips whose caption names the true colour (or shape), suppress the neurons labelled with
    that word; where the caption then names a wrong colour (shape), run the revision — suppress the neurons labelled
    with the wrong word(s), boost those labelled with the right word — and count the captions that name the right
    word and no wrong one of that kind again;
(d) transfer: a logistic-regression probe of the class on frozen v̄ (train clips → test clips).
Prints ``name: value`` lines and a markdown table; ``--json`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from interp_ray.data.scenes import ATTRIBUTE_VALUES, ATTRIBUTE_VOCAB, attribute_mentions
from interp_ray.explainers.semantic.config import LabelConfig, SemanticConfig, SemanticTrainConfig
from interp_ray.explainers.semantic.explainer import SemanticExplainer
from interp_ray.explainers.semantic.labels import fit_topic_head, linear_probe
from interp_ray.explainers.semantic.networks import NeuronEdit
from interp_ray.metrics.semantic import caption_faithfulness, clip_attributes, label_precision
from interp_ray.topics import TopicConfig, fit_topics


def few_shot_probe(train_x, train_y, test_x, test_y, *, per_class: int, draws: int = 5, seed: int = 0) -> float:
    """Mean probe accuracy from ``per_class`` training clips per class (the full probe saturates on scenes)."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(draws):
        idx = np.concatenate([rng.choice(np.flatnonzero(train_y == c), per_class, replace=False)
                              for c in np.unique(train_y)])
        accs.append(linear_probe(train_x[idx], train_y[idx], test_x, test_y))
    return float(np.mean(accs))


def planted_errors(ex: SemanticExplainer, test, kinds=("colour", "shape"), boost_scale: float = 1.0,
                   match: str = "words") -> dict:
    """(c): plant a wrong colour/shape by suppressing the right word's neurons, then revise; count restorations."""
    attrs = clip_attributes(test)
    base = ex.caption(test.features, test.mask)
    tried = no_neuron = planted = restored = 0
    examples = []
    for kind in kinds:
        values = set(ATTRIBUTE_VALUES[kind])
        for i, cap in enumerate(base):
            right = attrs[i][kind]
            if right not in attribute_mentions(cap):
                continue                                   # the caption is already wrong: nothing to plant
            tried += 1
            right_neurons = ex.neurons_for([right], match=match)
            if not right_neurons:
                no_neuron += 1
                continue
            plant = NeuronEdit(suppress=right_neurons)
            f, m = test.features[i:i + 1], test.mask[i:i + 1]
            wrong_cap = ex.caption(f, m, edit=plant)[0]
            wrong = sorted((attribute_mentions(wrong_cap) & values) - {right})
            if not wrong:
                continue                                   # the plant did not produce a wrong word
            planted += 1
            _, after = ex.revise(f, m, wrong=wrong, right=[right], base_edit=plant, boost_scale=boost_scale,
                                 match=match)
            named = attribute_mentions(after[0]) & values
            ok = right in named and not (named - {right})
            restored += ok
            if len(examples) < 6:
                examples.append({"kind": kind, "truth": right, "original": cap, "planted": wrong_cap,
                                 "revised": after[0], "restored": bool(ok)})
    return {"tried": tried, "no_neuron": no_neuron, "planted": planted, "restored": restored,
            "share": restored / planted if planted else float("nan"), "examples": examples}


def blend_plants(ex: SemanticExplainer, test, kind: str = "colour", weights=(0.4, 0.5, 0.6, 0.7),
                 match: str = "words", boost_scale: float = 1.0) -> dict:
    """(c), a plant that does not go through the labels: blend a clip's frame features with those of a clip whose
    class has another ``kind`` value (the same shape when one exists), at the smallest weight that makes the caption
    name that wrong value; then revise (wrong value → suppress, true value → boost) and count restorations."""
    attrs = clip_attributes(test)
    base = ex.caption(test.features, test.mask)
    values = set(ATTRIBUTE_VALUES[kind])
    tried = planted = restored = 0
    for i, cap in enumerate(base):
        right = attrs[i][kind]
        if right not in attribute_mentions(cap):
            continue
        others = [j for j in range(len(test)) if attrs[j][kind] != right]
        same_shape = [j for j in others if attrs[j]["shape"] == attrs[i]["shape"]]
        j = (same_shape or others)[i % len(same_shape or others)]
        tried += 1
        for w in weights:
            f = ((1 - w) * test.features[i] + w * test.features[j])[None]
            wrong_cap = ex.caption(f, test.mask[i:i + 1])[0]
            wrong = sorted((attribute_mentions(wrong_cap) & values) - {right})
            if wrong:
                planted += 1
                _, after = ex.revise(f, test.mask[i:i + 1], wrong=wrong, right=[right], match=match,
                                     boost_scale=boost_scale)
                named = attribute_mentions(after[0]) & values
                restored += right in named and not (named - {right})
                break
    return {"tried": tried, "planted": planted, "restored": restored,
            "share": restored / planted if planted else float("nan")}


def run(args) -> dict:
    from interp_ray.data.video_features import items_from_rows
    from interp_ray.explainers.semantic.config import SemanticTrainJob
    from jobs.train_explainer import role_stores

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    # The clips' frame features come from the activation store (extracted once by the extraction job, reused).
    job = SemanticTrainJob.model_validate({"source": {
        "checkpoint": args.checkpoint, "data": {"name": "scene_clips", "options": {"frames": args.frames}},
        "rows": {"train": args.train, "val": args.val, "test": args.test}, "layers": ["gap"],
        "keep": ["sentences", "attributes"], "store": {"root": args.store_root}, "compute": {"engine": "local"}}})
    stores = role_stores(job, ("train", "val", "test"))
    train, val, test = (items_from_rows(stores[r].iter_batches(256), "gap") for r in ("train", "val", "test"))
    load_s = time.perf_counter() - t0
    topics, train_topics = fit_topics(train.sentences, TopicConfig(num_topics=args.topics, seed=args.seed))
    labels_cfg = LabelConfig(top_n=args.top_n, margin=args.margin, concepts=list(ATTRIBUTE_VOCAB))
    settings = SemanticTrainConfig(epochs=args.epochs, batch_size=64, lr=2e-3, seed=args.seed)
    results: dict = {"setup": {**vars(args), "load_s": load_s, "topic_words": topics.top_words(6)}, "runs": {}}
    from interp_ray.metrics.captions import CaptionScorer

    with CaptionScorer() as scorer:
        for lam in args.lambdas:
            t1 = time.perf_counter()
            cfg = SemanticConfig(interp_weight=lam, decoder_reads=args.decoder_reads)
            saved = Path(args.load_dir) / f"lambda_{lam}" if args.load_dir else None
            if saved is not None and saved.is_dir():
                ex = SemanticExplainer.load(str(saved))      # reuse a captioner this benchmark saved before
                topics = ex.topics
            else:
                ex = SemanticExplainer(cfg).setup(train, topics, seed=args.seed)
                ex.fit(train, val, settings=settings)
            train_s = time.perf_counter() - t1
            enc_train = ex.encode(train.features, train.mask)
            if lam == 0:
                fit_topic_head(ex.model.topic, enc_train["a"], ex.topics.transform(train.sentences))
            ex.label(train, cfg=labels_cfg)
            captions = ex.caption(test.features, test.mask)
            scores = scorer.score(captions, test.sentences)
            enc_test = ex.encode(test.features, test.mask)
            row = {
                "train_s": train_s, "best_epoch": min(ex.history, key=lambda h: h["val_nll"])["epoch"],
                "val_nll": min(h["val_nll"] for h in ex.history),
                "meteor": scores["meteor"], "bleu4": scores["bleu4"], "cider": scores["cider"],
                "faithful": caption_faithfulness(captions, test),
                "topic_mse_test": float(((enc_test["s_hat"] - ex.topics.transform(test.sentences)) ** 2).sum(1).mean()),
                "labels": label_precision(ex, train, args.presence),
                "revision": planted_errors(ex, test, boost_scale=args.boost_scale, match=args.match)
                if cfg.decoder_reads == "a"
                else None,
                "revision_label_match": planted_errors(ex, test, boost_scale=args.boost_scale, match="label")
                if cfg.decoder_reads == "a" else None,
                "revision_blend": {k: blend_plants(ex, test, k, match=args.match, boost_scale=args.boost_scale)
                                   for k in ("colour", "shape")} if cfg.decoder_reads == "a" else None,
                "probe": linear_probe(enc_train["vbar"], train.labels, enc_test["vbar"], test.labels),
                "probe_few_shot": few_shot_probe(enc_train["vbar"], train.labels, enc_test["vbar"], test.labels,
                                                 per_class=args.probe_shots, seed=args.seed),
                "samples": [{"caption": c, "reference": r[0]} for c, r in zip(captions[:4], test.sentences[:4])],
            }
            results["runs"][str(lam)] = row
            if args.save_dir:
                ex.info = {"data": job.source.data.model_dump(), "benchmark": "semantic_eval"}
                ex.save(str(Path(args.save_dir) / f"lambda_{lam}"))
            print(f"lambda={lam}: trained in {train_s:.0f} s, METEOR {100 * row['meteor']:.2f}, "
                  f"labels {row['labels']['correct']}/{row['labels']['confident']}, probe {row['probe']:.3f}",
                  flush=True)
    results["total_s"] = time.perf_counter() - t0
    return results


def report(results: dict) -> None:
    runs = results["runs"]
    keys = list(runs)
    print("\n| measure | " + " | ".join(f"λ = {k}" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))

    def line(name, fn):
        print(f"| {name} | " + " | ".join(fn(runs[k]) for k in keys) + " |")

    line("METEOR ×100 (coco-caption)", lambda r: f"{100 * r['meteor']:.2f}")
    line("BLEU-4 ×100", lambda r: f"{100 * r['bleu4']:.2f}")
    line("CIDEr", lambda r: f"{r['cider']:.3f}")
    line("captions naming the right attributes", lambda r: f"{100 * r['faithful']:.1f}%")
    line("best val NLL (per sentence)", lambda r: f"{r['val_nll']:.3f}")
    line("topic MSE on test (L_I)", lambda r: f"{r['topic_mse_test']:.4f}")
    line("neurons alive / total", lambda r: f"{r['labels']['alive']}/{r['labels']['neurons']}")
    line("confident labels correct", lambda r: f"{r['labels']['correct']}/{r['labels']['confident']} = "
                                               f"{100 * r['labels']['share']:.1f}%")
    line("planted errors restored", lambda r: "n/a" if r["revision"] is None else
         f"{r['revision']['restored']}/{r['revision']['planted']} = {100 * r['revision']['share']:.1f}% "
         f"(tried {r['revision']['tried']}, no neuron {r['revision']['no_neuron']})")
    line("planted errors restored, neurons by confident label", lambda r: "n/a" if not r["revision_label_match"]
         else f"{r['revision_label_match']['restored']}/{r['revision_label_match']['planted']} (tried "
              f"{r['revision_label_match']['tried']}, no neuron {r['revision_label_match']['no_neuron']})")
    for kind in ("colour", "shape"):
        line(f"blend-planted wrong {kind} restored", lambda r, k=kind: "n/a" if not r["revision_blend"] else
             f"{r['revision_blend'][k]['restored']}/{r['revision_blend'][k]['planted']} = "
             f"{100 * r['revision_blend'][k]['share']:.1f}% (tried {r['revision_blend'][k]['tried']})")
    line("chance share for those neurons' labels", lambda r: f"{100 * r['labels']['chance']:.1f}%")
    line("linear probe accuracy on v̄", lambda r: f"{100 * r['probe']:.1f}%")
    line(f"few-shot probe ({results['setup']['probe_shots']}/class, 5 draws)",
         lambda r: f"{100 * r['probe_few_shot']:.1f}%")
    line("train time (s)", lambda r: f"{r['train_s']:.0f}")
    if "0.1" in runs and "0.0" in runs:
        a, b = runs["0.1"], runs["0.0"]
        print()
        print(f"meteor_cost_points: {100 * (b['meteor'] - a['meteor']):.2f}  (goal <= 1.0)")
        print(f"label_share_lambda_0.1: {a['labels']['share']:.3f}  (goal >= 0.80)")
        print(f"label_share_lambda_0: {b['labels']['share']:.3f}  (goal: lower than λ = 0.1)")
        if a["revision"] is not None:
            print(f"restored_share_lambda_0.1: {a['revision']['share']:.3f}  (goal >= 0.50)")
        print(f"probe_ratio_0.1_over_0: {a['probe'] / b['probe']:.3f}  (goal >= 1.0)")
        print(f"few_shot_probe_ratio_0.1_over_0: {a['probe_few_shot'] / b['probe_few_shot']:.3f}")
    print(f"total_s: {results['total_s']:.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1200)
    p.add_argument("--val", type=int, default=240)
    p.add_argument("--test", type=int, default=240)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--topics", type=int, default=12)
    p.add_argument("--lambdas", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.0])
    p.add_argument("--decoder-reads", choices=["a", "v"], default="a")
    p.add_argument("--top-n", type=int, default=20)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--presence", type=float, default=0.5, help="a label is correct when this share of V_d has it")
    p.add_argument("--boost-scale", type=float, default=1.0)
    p.add_argument("--match", choices=["label", "words"], default="words",
                   help="(c): a word selects neurons by their confident label or by their top-m words")
    p.add_argument("--probe-shots", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="outputs/scenes_cnn", help="the scenes CNN (frame features)")
    p.add_argument("--store-root", default="outputs/activations", help="activation stores (the clips' features)")
    p.add_argument("--save-dir", default=None, help="save each captioner here (lambda_<λ>/)")
    p.add_argument("--load-dir", default=None, help="load lambda_<λ>/ captioners saved by --save-dir instead of "
                                                    "training them")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = run(args)
    report(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
