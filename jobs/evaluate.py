"""Evaluate InterpNET variants: the paper's Table 1 on our data (language metrics, attribute faithfulness, accuracy).

    python -m jobs.evaluate --config configs/interpnet_scenes.yaml            # train what is missing, then score
    python -m jobs.evaluate --hypotheses gen.txt --references refs.txt --refs-per-sentence 5   # score two files

For every variant in ``evaluate.variants`` the explainer checkpoint ``<evaluate.output_dir>/<variant>`` is used, or
trained first when it is missing (``evaluate.trainer``: ``ray`` = ``jobs.train_explainer.train`` on Ray Train,
``local`` = the same trainer in this process). The test split is read from the activation store (the extraction job
writes it first when missing) and scored whole. Each explainer then explains the test split (greedy decoding unless
``evaluate.beam_width`` > 1) and is scored against every image's reference sentences with one shared METEOR process.
Writes ``table.md``, ``results.json`` and ``samples.md`` to ``evaluate.output_dir`` and prints the table.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from interp_ray.config import load_config
from interp_ray.errors import UserError
from interp_ray.explainers.interpnet.config import VARIANTS, InterpNETTrainJob
from interp_ray.explainers.interpnet.explainer import InterpNET
from interp_ray.explainers.interpnet.tables import collect
from interp_ray.metrics.captions import CaptionScorer, attribute_faithfulness, score_files
from interp_ray.training import state_digest
from jobs.common import base_parser, exit_with, init_ray
from jobs.train_explainer import check_data, role_stores, train, train_local, with_layers

log = logging.getLogger("interp_ray.evaluate")
NAMES = {"captioning": "Captioning (input only)", "interpnet_0": "InterpNET_0 (output only)",
         "interpnet_1": "InterpNET_1 (1 hidden layer)", "interpnet_2": "InterpNET_2 (2 hidden layers)",
         "interpnet_3": "InterpNET_3 (3 hidden layers)"}
COLUMNS = [  # (key, header, scale)
    ("meteor_segment_mean", "METEOR (paper protocol)", 100),
    ("meteor", "METEOR (coco)", 100),
    ("bleu4", "BLEU-4", 100),
    ("cider", "CIDEr-D", 100),
    ("rouge_l", "ROUGE-L", 100),
    ("attribute_recall", "attr. recall %", 100),
    ("attribute_false", "attr. false %", 100),
    ("accuracy", "cls. acc. %", 100),
    ("pred_attribute_recall", "recall vs. pred. %", 100),
    ("pred_attribute_false", "false vs. pred. %", 100),
]


def variant_config(cfg: InterpNETTrainJob, variant: str, output: Path) -> InterpNETTrainJob:
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    c = cfg.model_copy(deep=True)
    # Each variant brings its own classifier sizes (the paper's); everything else is shared.
    c.explainer = c.explainer.model_copy(update={"variant": variant, "hidden": None})
    c.explainer = type(c.explainer).model_validate(c.explainer.model_dump())
    c.output = str(output)
    if c.run.name:
        c.run.name = f"{c.run.name}-{variant}"
    return c


def needs_training(cfg: InterpNETTrainJob, variant: str) -> bool:
    return cfg.evaluate.retrain or not (Path(cfg.evaluate.output_dir) / variant / "config.json").is_file()


def ensure_trained(cfg: InterpNETTrainJob, variant: str) -> tuple[Path, float | None]:
    out = Path(cfg.evaluate.output_dir) / variant
    if not needs_training(cfg, variant):
        return out, None
    vcfg = variant_config(cfg, variant, out)
    t0 = time.perf_counter()
    print(f"[evaluate] training {variant} ({cfg.evaluate.trainer}) …", flush=True)
    if cfg.evaluate.trainer == "ray":
        init_ray()
        train(vcfg)
    else:
        train_local(vcfg)
    return out, time.perf_counter() - t0


def test_table(cfg: InterpNETTrainJob):
    """The test split's pooled activations and sentences, read from its store (evaluation scores it whole)."""
    store = role_stores(cfg, ["test"])["test"]
    columns = list(dict.fromkeys(["id", "label", "prediction", "sentences", *cfg.explainer.columns()]))
    return collect(store.iter_batches(1024, columns=columns), cfg.explainer.columns(),
                   pool=cfg.explainer.feature_pool)


def evaluate(cfg: InterpNETTrainJob) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg = with_layers(cfg)   # h_0 from the classifier's roles when the config names none; named layers checked
    out_dir = Path(cfg.evaluate.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for v in cfg.evaluate.variants:
        if v not in VARIANTS:
            raise UserError(f"unknown variant {v!r}; valid: {', '.join(VARIANTS)}")
    to_train = [v for v in cfg.evaluate.variants if needs_training(cfg, v)]
    # Every store the run reads, made in one extraction pipeline: the test split's, and the training splits' when a
    # variant is still to train (all variants read the same layers, so the same stores).
    role_stores(cfg, ["train", "val", "test"] if to_train else ["test"])
    test = test_table(cfg)
    if test.sentences is None or not all(test.sentences):
        raise UserError("the test split has images without reference sentences; nothing to score against")
    image_model_acc = (float(np.mean(test.prediction == test.labels)) if test.prediction is not None else None)
    rows, samples = [], {}
    with CaptionScorer(meteor=cfg.evaluate.meteor) as scorer:
        for variant in cfg.evaluate.variants:
            path, train_s = ensure_trained(cfg, variant)
            explainer = InterpNET.load(str(path))
            if explainer.config.variant != variant:
                raise UserError(f"{path} holds a {explainer.config.variant!r} explainer, not {variant!r}")
            t0 = time.perf_counter()
            r, probs = explainer.introspect(test)
            sentences, _ = explainer.generate(r, beam_width=cfg.evaluate.beam_width)
            decode_s = time.perf_counter() - t0
            accuracy = float((probs.argmax(1).numpy() == test.labels).mean())
            scores = scorer.score(sentences, test.sentences)
            row = {"variant": variant, "name": NAMES[variant], **scores, "accuracy": accuracy,
                   "checkpoint": str(path), "train_s": train_s, "decode_s": decode_s,
                   "best_epoch": _best_epoch(explainer), "epochs": len(explainer.history.get("explainer", [])),
                   "empty_sentences": sum(1 for s in sentences if not s.strip()),
                   **_classifier_digests(explainer)}
            if cfg.source.data.name == "scenes":
                row.update(attribute_faithfulness(sentences, test.labels))
                # The same shares against the class the classifier predicted: does the sentence explain the decision
                # the model actually made (right or wrong)?
                pred = attribute_faithfulness(sentences, probs.argmax(1).numpy())
                row.update({"pred_attribute_recall": pred["attribute_recall"],
                            "pred_attribute_false": pred["attribute_false"]})
            rows.append(row)
            samples[variant] = [{"id": str(i), "label": int(lab), "sentence": s}
                                for i, lab, s in list(zip(test.ids, test.labels, sentences))[:cfg.evaluate.samples]]
            print(f"[evaluate] {variant}: " + ", ".join(f"{h} {row[k] * s:.1f}" for k, h, s in COLUMNS if k in row),
                  flush=True)
    result = {"rows": rows, "samples": samples, "image_model_accuracy": image_model_acc, "test_images": len(test),
              "references_per_image": float(np.mean([len(s) for s in test.sentences])),
              "beam_width": cfg.evaluate.beam_width, "config": cfg.model_dump(),
              "seconds": time.perf_counter() - t_start}
    write_outputs(out_dir, result, cfg)
    return result


def _classifier_digests(explainer: InterpNET) -> dict[str, str]:
    """The variant's own classifier when its explainer network started training (the first explainer epoch records
    it, just after the freeze) and as saved: equal digests mean explainer training left that classifier unchanged
    (the claim InterpNET 1 reads them). Empty for an explainer without that history."""
    hist = explainer.history.get("explainer") or []
    if not hist or "classifier_digest" not in hist[0]:
        return {}
    return {"classifier_digest_frozen": hist[0]["classifier_digest"],
            "classifier_digest_final": state_digest(explainer.classifier_state())}


def _best_epoch(explainer: InterpNET) -> int | None:
    hist = explainer.history.get("explainer") or []
    return int(hist[-1]["best_epoch"]) if hist else None


def format_table(result: dict[str, Any]) -> str:
    cols = [(k, h, s) for k, h, s in COLUMNS if any(k in r for r in result["rows"])]
    lines = ["| Model | " + " | ".join(h for _, h, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[k] * s:.1f}" if k in r else "–" for k, _, s in cols) + " |")
    return "\n".join(lines)


def write_outputs(out_dir: Path, result: dict[str, Any], cfg: InterpNETTrainJob) -> None:
    table = format_table(result)
    acc = result["image_model_accuracy"]
    decoding = "greedy" if result["beam_width"] == 1 else f"beam search, width {result['beam_width']}"
    notes = [f"Test images: {result['test_images']} ({result['references_per_image']:.1f} reference sentences each); "
             f"decoding: {decoding}.",
             "METEOR (paper protocol) = mean of per-sentence METEOR-1.5 scores (-l en -norm), as the InterpNET "
             "paper; METEOR (coco) = pycocoevalcap's corpus METEOR; BLEU-4, CIDEr-D (pycocoevalcap's 'CIDEr') and "
             "ROUGE-L from pycocoevalcap after PTB tokenisation; all × 100.",
             "attr. recall = share of the true discriminative attributes named; attr. false = share of named "
             "attributes the object does not have; cls. acc. = the variant's (frozen) classifier on the test split; "
             "'vs. pred.' = the same two shares measured against the class the classifier predicted (does the "
             "sentence explain the decision the model made?)."]
    if acc is not None:
        notes.append(f"The image model that gives h_0 ({cfg.source.checkpoint}, layer "
                     f"{cfg.explainer.feature_layer}) has test accuracy {acc * 100:.1f}%.")
    (out_dir / "table.md").write_text(table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    lines = []
    for variant, items in result["samples"].items():
        lines += [f"## {variant}", ""] + [f"- `{s['id']}` (class {s['label']}): {s['sentence']}" for s in items] + [""]
    (out_dir / "samples.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--hypotheses", help="score this file of generated sentences (one a line) instead")
    p.add_argument("--references", help="reference file for --hypotheses: K consecutive lines per sentence")
    p.add_argument("--refs-per-sentence", type=int, default=1, help="K for --references (METEOR's -r)")
    args = p.parse_args(argv)
    if args.hypotheses or args.references:
        if not (args.hypotheses and args.references):
            raise UserError("--hypotheses and --references go together")
        scores = score_files(args.hypotheses, args.references, args.refs_per_sentence)
        from interp_ray.metrics.captions import LABELS

        for key, value in scores.items():
            print(f"{LABELS[key]}: {value:.4f}")
        return 0
    cfg = load_config(InterpNETTrainJob, args.config, args.overrides)
    check_data(cfg, ("train", "val", "test"))   # captions on every split it trains on and scores, before any work
    if args.address:
        init_ray(args.address)
    result = evaluate(cfg)
    print(format_table(result))
    print(f"written to {Path(cfg.evaluate.output_dir).resolve()}/table.md ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    exit_with(main)
