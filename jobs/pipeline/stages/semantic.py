"""Dong et al.'s semantic captioner: frame features into the store, topics, Ray Train, neuron labels, caption
scores and one human-in-the-loop edit, on a wrong caption chosen by rule (``jobs.train_explainer``), and its report
section."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobs.pipeline.engine import Context, PipelineConfig, StageRef, pipeline_stage, progress, reports


@pipeline_stage("semantic", job="interp_ray.explainers.semantic.config:SemanticTrainJob",
                default=StageRef(config="configs/semantic_scenes.yaml", classifier="scenes"))
def run_semantic(cfg: PipelineConfig, ctx: Context) -> dict[str, Any]:
    from interp_ray.data.video_features import items_from_rows
    from interp_ray.explainers.semantic.config import SemanticTrainJob
    from interp_ray.explainers.semantic.explainer import SemanticExplainer
    from interp_ray.metrics.captions import CaptionScorer
    from interp_ray.metrics.semantic import caption_faithfulness, first_correction, label_precision
    from jobs.train_explainer import role_stores, train, with_layers

    job = with_layers(ctx.learned_job(cfg, SemanticTrainJob))
    t0 = progress(f"semantic captioner (Dong et al., λ = {job.explainer.interp_weight}) on {job.source.data.name}: "
                  f"frame features into the store, topics, Ray Train, neuron labels, scoring")
    stores = role_stores(job, ("train", "val", "test"))  # every store the stage reads, in one extraction pipeline
    r = train(job)
    ex = SemanticExplainer.load(r["checkpoint"])
    # The evaluation reads its clips whole (240 test clips; the train clips for the labels' precision).
    items = {role: items_from_rows(store.iter_batches(256), job.frame_column) for role, store in stores.items()}
    test = items["test"]
    captions = ex.caption(test.features, test.mask)
    with CaptionScorer() as scorer:
        scores = scorer.score(captions, test.sentences)
    out = {"lambda": job.explainer.interp_weight, "epochs": len(r["history"]), "best_epoch": r["best_epoch"],
           "test_clips": len(test), "scores": scores, "seconds": 0.0,
           "samples": [{"id": str(i), "caption": c, "reference": refs[0]}
                       for i, c, refs in list(zip(test.ids, captions, test.sentences))[:4]],
           "neurons": [{"neuron": n.neuron, "label": n.label, "words": n.words[:4], "margin": n.margin}
                       for n in ex.neurons if n.confident][:12]}
    if test.attributes is not None:
        out["faithful_captions"] = caption_faithfulness(captions, test)
        precision = label_precision(ex, items["train"])
        out["label_precision"] = {k: v for k, v in precision.items() if k != "labels"}
        out["revision"] = first_correction(ex, test, captions)
    out["seconds"] = time.perf_counter() - t0
    print(f"[pipeline] semantic: METEOR {scores.get('meteor_segment_mean', float('nan')) * 100:.1f}, "
          f"{len(out['neurons'])} confident neuron labels shown", flush=True)
    return out


@reports("semantic")
def report_semantic(r: dict[str, Any], root: Path) -> list[str]:
    sc = r["scores"]
    lines = [f"## Semantic captioner (Dong et al.; λ = {r['lambda']:g}, {r['epochs']} epochs on Ray Train, best "
             f"{r['best_epoch']})", "",
             # Dong et al.'s own METEOR protocol is not known (PAPERS.md); this is InterpNET paper's segment mean
             "| test clips | METEOR (segment mean, InterpNET's protocol) | BLEU-4 | CIDEr-D | faithful captions | "
             "confident labels present in their top clips |", "|---|---|---|---|---|---|"]
    lp = r.get("label_precision") or {}
    share = (f"{lp['share'] * 100:.1f}% ({lp['correct']} of {lp['confident']}; chance "
             f"{lp['chance'] * 100:.0f}%)" if lp.get("confident") else "–")
    faithful = f"{r['faithful_captions'] * 100:.1f}%" if "faithful_captions" in r else "–"
    lines.append(f"| {r['test_clips']} | {sc.get('meteor_segment_mean', float('nan')) * 100:.1f} | "
                 f"{sc.get('bleu4', float('nan')) * 100:.1f} | {sc.get('cider', float('nan')) * 100:.1f} | "
                 f"{faithful} | {share} |")
    lines += ["", "Confidently labelled neurons of the interpretable layer (label; top words):", ""]
    lines += [f"- neuron {n['neuron']}: **{n['label']}** ({', '.join(n['words'])})" for n in r["neurons"]] or ["- none"]
    lines += ["", "Captions:", ""] + [f"- `{s['id']}`: {s['caption']} (a reference: {s['reference']})"
                                      for s in r["samples"]]
    if "revision" not in r:   # clips without ground-truth attributes: no caption can be called wrong
        return lines
    rev = r["revision"]
    lines += ["", "Human-in-the-loop edit, on the clip chosen by this rule: the first test clip whose caption is wrong "
                  "(names an attribute the clip does not have, or leaves out one that tells its class apart) and has "
                  "a wrong or missing word that a confidently labelled neuron carries; suppress the neurons labelled "
                  "with each untrue word, boost those labelled with the clip's true value of its kind and with each "
                  "missing word, decode again."]
    if rev:
        lines += ["", f"`{rev['id']}` (untrue: {', '.join(rev['untrue']) or '—'}; missing: "
                      f"{', '.join(rev['missing']) or '—'}; suppress *{', '.join(rev['suppress']) or '—'}*, boost "
                      f"*{', '.join(rev['boost']) or '—'}*): “{rev['before']}” → “{rev['after']}” — suppressed words "
                      f"{'gone' if rev['suppressed_gone'] else 'still named'}, boosted words "
                      f"{'named' if rev['boosted_named'] else 'not all named'}; the caption is "
                      f"{'now right' if rev['corrected'] else 'still wrong'}."]
    else:
        lines += ["", "No test caption qualifies (none is wrong in a word a labelled neuron carries): no edit shown."]
    return lines
