"""FLINT on Fashion-MNIST at the paper's budget, one seed per call: BASE-f, joint FLINT (FLINT-f, FLINT-g), the
L1-only ablation (entropy weight 0), post hoc on the frozen BASE-f, each trained by ``jobs.train_flint`` on Ray Train;
LIME under VIBI's comparison protocol (``interp_ray.metrics.fidelity.chunk_lime``) and the dense in-sample reading;
VIBI trained by ``jobs.train_explainer`` on Ray Train against FLINT-f; and the FLINT 6 pictures checked for their
property. ``rows`` turns the seeds into FLINT 1–6 beside FLINT's Table 1 (PAPERS.md §3).

Section keys (``configs/reproduce*.yaml``, ``stages.flint_fashion_mnist``):

    config: configs/flint_fashion_mnist.yaml     # the FLINT job; ``set`` overrides it for every training
    set: {data.options.limit: 6000}              # what the machine cannot afford is cut here (and said in ``how``)
    test_rows: 10000                             # the Fashion-MNIST test rows every figure is scored on
    ablation_tau: 10.0                           # FLINT 4: CNS also shown here (1/τ = 0.1, the FashionMNIST one)
    posthoc_min_fidelity: 0.9                    # FLINT 5's "high fidelity"
    accuracy_tolerance: 0.01                     # FLINT 1 / FLINT 4: "no material loss", "matched accuracy"
    lime: {images: 1000, k: 4, chunk_size: 2, num_samples: 1000, dense_images: 100}
    vibi: {config: configs/vibi_fashion_mnist.yaml, set: {train.epochs: 8}, limit: 20000}   # limit: VIBI's
                                                 # training rows (None: all 55,000; its own cut, VIBI is cheaper)
    pictures: {max_pairs: 10, random_images: 500}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from interp_ray.reproduction import beyond_spread, fmt_mean_std, mean_std, not_below
from jobs.reproduce.stages._common import job_config, row, seeds_phrase, store_root, values
from jobs.reproduce.stages._steps import cached

NAME = "flint_fashion_mnist"
CLAIMS = tuple(f"FLINT {i}" for i in range(1, 7))

# FLINT's Table 1, FashionMNIST row (PAPERS.md §3), in %: (mean, std); None where the paper gives no std.
TABLE1 = {"base_f_accuracy": (90.4, 0.1), "flint_f_accuracy": (90.5, 0.2), "flint_g_accuracy": (86.8, 0.4),
          "lime_fidelity": (67.3, 1.3), "vibi_fidelity": (88.4, 0.3), "flint_g_fidelity": (91.5, 0.1)}
# The L1-only ablation: the FashionMNIST warm-up without the entropy term (FLINT 4; the paper ran it on QuickDraw).
L1_ONLY_SCHEDULE = {"pred": [[1, 1.0]], "rec": [[1, 0.8]], "fid": [[3, 0.5]], "l1": [[3, 0.1]], "ent": []}
MODES = ("base", "joint", "l1_only", "posthoc")


def _section(section: dict[str, Any]) -> dict[str, Any]:
    """The section with its defaults filled in."""
    lime = {"images": 1000, "k": 4, "chunk_size": 2, "num_samples": 1000, "dense_images": 100,
            **(section.get("lime") or {})}
    vibi = {"config": "configs/vibi_fashion_mnist.yaml", "set": {}, "enabled": True, "limit": None,
            **(section.get("vibi") or {})}
    pictures = {"max_pairs": 10, "random_images": 500, **(section.get("pictures") or {})}
    return {"config": "configs/flint_fashion_mnist.yaml", "set": {}, "test_rows": 10000, "ablation_tau": 10.0,
            "posthoc_min_fidelity": 0.9, "accuracy_tolerance": 0.01, **section,
            "lime": lime, "vibi": vibi, "pictures": pictures}


def _flint_job(s: dict[str, Any], mode: str, seed: int, workdir: Path, **extra: Any):
    from interp_ray.explainers.flint.config import FlintJobConfig

    forced: dict[str, Any] = {"train__seed": seed, "output": str(workdir / mode), "run__name": f"flint-{mode}",
                              "run__storage_path": str(workdir / "ray_runs"), "store__root": store_root(workdir),
                              "flint__mode": "joint" if mode == "l1_only" else mode,
                              # only joint FLINT's pictures are drawn and checked (FLINT 6): no other training
                              # grows its AM+PI images
                              "pictures__enabled": mode == "joint", "pictures__stored": mode == "joint",
                              "pictures__dir": str(workdir / "pictures"),
                              "pictures__max_pairs": int(s["pictures"]["max_pairs"]), **extra}
    if mode == "l1_only":
        forced["flint__schedule"] = L1_ONLY_SCHEDULE
    return job_config(s, FlintJobConfig, f"stages.{NAME}", **forced)


def _test_set(job, rows: int):
    from interp_ray.data import load_dataset

    options = {k: v for k, v in job.data.options.items() if k != "limit"}   # the cut is for training only
    return load_dataset(job.data.name, "test", **options, limit=rows)


def _train_mode(s: dict[str, Any], mode: str, seed: int, workdir: Path) -> dict[str, Any]:
    """One FLINT training on Ray Train (``jobs.train_flint``), scored on the stage's test rows."""
    from interp_ray.explainers.flint.explainer import FlintExplainer
    from interp_ray.explainers.flint.interpretation import evaluate_model
    from jobs.train_flint import prepare, train

    extra = {"flint__predictor_checkpoint": str(workdir / "base_f_classifier")} if mode == "posthoc" else {}
    job = _flint_job(s, mode, seed, workdir, **extra)
    t0 = time.perf_counter()
    job, prepared = prepare(job)
    out = train(job, prepared)
    explainer = FlintExplainer.load(out["checkpoint"])
    taus = sorted({*job.flint.taus, float(s["ablation_tau"])})
    test = evaluate_model(explainer.flint, _test_set(job, int(s["test_rows"])), taus=taus)
    if mode == "base":   # post hoc freezes this f: hand it on as a classifier checkpoint
        _save_f(explainer, workdir / "base_f_classifier", job)
    return {"test": test, "epochs": len(out["history"]), "checkpoint": out["checkpoint"],
            "pictures": [p for p in out.get("pictures") or [] if p.get("class") is not None],
            "train_rows": len(prepared.train_ds), "seconds": time.perf_counter() - t0}


def _save_f(explainer, path: Path, job) -> None:
    """A FLINT's f as an interp-ray classifier checkpoint: what post hoc freezes and VIBI explains."""
    from interp_ray.checkpoint import save_classifier

    save_classifier(path, explainer.flint.predictor, model_name=explainer.config["model"]["name"],
                    model_options=explainer.config["model"]["options"], class_names=explainer.class_names,
                    data=job.data.model_dump())


def _pictures_check(s: dict[str, Any], joint: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """FLINT 6: each (class, attribute) picture must show what it claims. Per pair: (a) φ_j is higher on its MAS
    images than on random training images; (b) AM+PI raised φ_j above its initialisation κ·x₀; (c) φ_j is higher on
    held-out test images of the class than on test images of the other classes (the attribute speaks for the
    class)."""
    import torch

    from interp_ray.data import load_dataset
    from interp_ray.explainers.flint.am import activation_maximisation
    from interp_ray.explainers.flint.explainer import FlintExplainer

    explainer = FlintExplainer.load(joint["checkpoint"])
    flint = explainer.flint.eval()
    job = _flint_job(s, "joint", seed, workdir)
    train_ds = load_dataset(job.data.name, "train", **job.data.options)
    test = _test_set(job, int(s["test_rows"]))
    rng = np.random.default_rng(seed)
    rand = train_ds.get_batch(np.sort(rng.choice(len(train_ds), min(int(s["pictures"]["random_images"]),
                                                                     len(train_ds)), replace=False)))["image"]
    tb = test.get_batch(np.arange(len(test)))
    am = explainer.am_settings()

    def phi(x: np.ndarray | torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return flint.attributes(torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)).numpy()

    phi_rand, phi_test = phi(rand), phi(tb["image"])
    pairs = []
    for p in joint["pictures"]:
        j = explainer.attribute_names.index(p["attribute"])
        c = int(p["class"])
        mas = train_ds.get_batch(np.array([int(i) for i in p["mas_rows"]]))["image"]
        init = torch.from_numpy(np.ascontiguousarray(mas))
        grown = activation_maximisation(flint, j, init, am)
        in_class = tb["label"] == c
        pairs.append({"class": c, "attribute": p["attribute"], "file_exists": Path(p["path"]).is_file(),
                      "mas_phi": float(phi(mas)[:, j].mean()), "random_phi": float(phi_rand[:, j].mean()),
                      "am_phi": float(phi(grown)[:, j].mean()), "am_init_phi": float(phi(am.kappa * init)[:, j].mean()),
                      "class_test_phi": float(phi_test[in_class, j].mean()),
                      "other_test_phi": float(phi_test[~in_class, j].mean())})
    for q in pairs:
        q["ok"] = bool(q["file_exists"] and q["mas_phi"] > q["random_phi"] and q["am_phi"] > q["am_init_phi"]
                       and q["class_test_phi"] > q["other_test_phi"])
    return {"pairs": pairs, "pairs_ok": sum(q["ok"] for q in pairs), "pairs_total": len(pairs)}


def _lime(s: dict[str, Any], joint: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """LIME against FLINT-f on the first ``lime.images`` test rows, under VIBI's protocol (both fidelities), with
    FLINT-g's fidelity on the same rows; and the dense in-sample reading on the first ``lime.dense_images``."""
    import torch

    from interp_ray.explainers.flint.explainer import FlintExplainer
    from interp_ray.metrics.fidelity import ChunkLimeSettings, chunk_lime, lime_predictions, torch_proba

    lime = s["lime"]
    flint = FlintExplainer.load(joint["checkpoint"]).flint.eval()
    test = _test_set(_flint_job(s, "joint", seed, workdir), int(s["test_rows"]))
    n = min(int(lime["images"]), len(test))
    images = test.get_batch(np.arange(n))["image"]
    with torch.inference_mode():
        out = flint(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    pf, pg = out.logits.argmax(1).numpy(), out.interp_logits.argmax(1).numpy()
    proba = torch_proba(flint.predictor)
    settings = ChunkLimeSettings(k=int(lime["k"]), chunk_size=int(lime["chunk_size"]),
                                 num_samples=int(lime["num_samples"]))
    t0 = time.perf_counter()
    res = chunk_lime(proba, images, settings=settings, seed=seed * 100_003)
    paper_s = time.perf_counter() - t0
    nd = min(int(lime["dense_images"]), n)
    t0 = time.perf_counter()
    dense = lime_predictions(proba, images[:nd], test.num_classes, seed=seed * 100_003) if nd else np.array([])
    return {"images": n, "k": settings.k, "chunk_size": settings.chunk_size, "num_samples": settings.num_samples,
            "approximator_fidelity": res.approximator_fidelity, "rationale_fidelity": res.rationale_fidelity,
            "flint_g_fidelity_same_images": float((pg == pf).mean()), "seconds_per_image": paper_s / max(n, 1),
            "dense_images": nd, "dense_in_sample_fidelity": float((dense == pf[:nd]).mean()) if nd else None,
            "dense_seconds_per_image": (time.perf_counter() - t0) / max(nd, 1)}


def _vibi(s: dict[str, Any], joint: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """VIBI trained by ``jobs.train_explainer`` on Ray Train against FLINT-f (saved as a classifier checkpoint), then
    its two fidelities to FLINT-f on the stage's test rows."""
    import torch

    from interp_ray.checkpoint import load_classifier
    from interp_ray.explainers.flint.explainer import FlintExplainer
    from interp_ray.explainers.vibi.explainer import VIBI
    from interp_ray.explainers.vibi.config import VibiTrainJob
    from jobs.train_explainer import train

    explainer = FlintExplainer.load(joint["checkpoint"])
    fjob = _flint_job(s, "joint", seed, workdir)
    f_dir = workdir / "flint_f_classifier"
    _save_f(explainer, f_dir, fjob)
    v = s["vibi"]
    data = fjob.data.model_dump()
    data["options"] = {k: val for k, val in data["options"].items() if k != "limit"}
    if v["limit"]:
        data["options"]["limit"] = int(v["limit"])
    job = job_config(v, VibiTrainJob, f"stages.{NAME}.vibi", source__checkpoint=str(f_dir),
                     source__data=data, source__store__root=store_root(workdir), train__seed=seed,
                     output=str(workdir / "vibi"), run__name="vibi", run__storage_path=str(workdir / "ray_runs"))
    t0 = time.perf_counter()
    out = train(job)
    f = load_classifier(str(f_dir)).model.eval()
    vibi = VIBI.load(out["checkpoint"], classifier=f)
    test = _test_set(fjob, int(s["test_rows"]))
    approx, rationale = [], []
    for lo in range(0, len(test), 1000):
        x = test.get_batch(np.arange(lo, min(lo + 1000, len(test))))["image"]
        with torch.no_grad():
            f_class = f(torch.from_numpy(np.ascontiguousarray(x))).argmax(1).numpy()
        r = vibi.rationale(x)
        approx.append(r["log_q"].argmax(1).cpu().numpy() == f_class)
        rationale.append(vibi.rationale_classes(r["x"], r["z"]) == f_class)
    return {"approximator_fidelity": float(np.concatenate(approx).mean()),
            "rationale_fidelity": float(np.concatenate(rationale).mean()), "epochs": len(out["history"]),
            "best_epoch": out["best_epoch"], "k": job.explainer.k, "chunk_size": job.explainer.chunk_size,
            "lr": job.train.lr, "train_rows": int(v["limit"] or 55000),
            "seconds": time.perf_counter() - t0}


def run(section: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    s = _section(section)
    workdir = Path(workdir)
    out: dict[str, Any] = {}
    for mode in MODES:
        out[mode] = cached(workdir, mode, lambda m=mode: _train_mode(s, m, seed, workdir))
        print(f"[reproduce] {NAME} seed {seed}: {mode} accuracy f {out[mode]['test']['accuracy_f']:.4f}, g "
              f"{out[mode]['test']['accuracy_g']:.4f}, fidelity {out[mode]['test']['fidelity']:.4f}", flush=True)
    out["pictures_check"] = cached(workdir, "pictures_check", lambda: _pictures_check(s, out["joint"], seed, workdir))
    out["lime"] = cached(workdir, "lime", lambda: _lime(s, out["joint"], seed, workdir))
    if s["vibi"]["enabled"]:
        out["vibi"] = cached(workdir, "vibi", lambda: _vibi(s, out["joint"], seed, workdir))
    out["budget"] = {"train_rows": out["joint"]["train_rows"], "epochs": out["joint"]["epochs"],
                     "test_rows": out["joint"]["test"]["samples"]}
    return out


# ---------------------------------------------------------------------------------------------------------------
# Report rows
# ---------------------------------------------------------------------------------------------------------------

def _pct(values: list[float]) -> str:
    return fmt_mean_std(values, pct=True)


def _budget(per_seed: dict[int, dict], s: dict[str, Any]) -> str:
    b = next(iter(per_seed.values()))["budget"]
    return (seeds_phrase(per_seed) + f"; each model trained by jobs.train_flint on Ray "
            f"Train with the paper's FashionMNIST settings ({b['epochs']} epochs, batch 16, Adam 1e-4, the mnist "
            f"warm-up, J = 25) but on {b['train_rows']:,} of the 55,000 training images (cut for this 2-core CPU; "
            f"stage config `set`: {s['set']}); scored on {b['test_rows']:,} test images")


def rows(per_seed: dict[int, dict], section: dict) -> list[dict]:
    s = _section(section)
    budget = _budget(per_seed, s)
    tol = float(s["accuracy_tolerance"])
    base, ff = values(per_seed, "base", "test", "accuracy_f"), values(per_seed, "joint", "test", "accuracy_f")
    fg_acc, fg_fid = values(per_seed, "joint", "test", "accuracy_g"), values(per_seed, "joint", "test", "fidelity")
    out = []

    ok1 = not_below(ff, base, tolerance=tol)
    out.append(row("FLINT 1", "Training with L_int does not materially reduce accuracy "
                   "(FLINT-f vs BASE-f, FashionMNIST)", "BASE-f 90.4 ± 0.1, FLINT-f 90.5 ± 0.2",
                   f"BASE-f {_pct(base)}, FLINT-f {_pct(ff)}", "met" if ok1 else "not met",
                   f"{budget}. Met when mean(BASE-f) − mean(FLINT-f) ≤ std + std + {tol:.0%} (not_below)."))

    lime_a = values(per_seed, "lime", "approximator_fidelity")
    lime_r = values(per_seed, "lime", "rationale_fidelity")
    lime_best = [max(a, r) for a, r in zip(lime_a, lime_r)]
    l0 = next(iter(per_seed.values()))["lime"]
    dense = [r["lime"]["dense_in_sample_fidelity"] for r in per_seed.values()
             if r["lime"].get("dense_in_sample_fidelity") is not None]
    has_vibi = all("vibi" in r for r in per_seed.values())
    vibi_a = values(per_seed, "vibi", "approximator_fidelity") if has_vibi else []
    vibi_r = values(per_seed, "vibi", "rationale_fidelity") if has_vibi else []
    vibi_best = [max(a, r) for a, r in zip(vibi_a, vibi_r)]
    ok2 = beyond_spread(fg_fid, lime_best) and (beyond_spread(fg_fid, vibi_best) if has_vibi else False)
    columns = ["BASE-f (acc)", "FLINT-f (acc)", "FLINT-g (acc)", "LIME (fid)", "VIBI (fid)", "FLINT-g (fid)"]
    paper = [f"{m} ± {sd}" for m, sd in (TABLE1[k] for k in ("base_f_accuracy", "flint_f_accuracy",
                                                            "flint_g_accuracy", "lime_fidelity", "vibi_fidelity",
                                                            "flint_g_fidelity"))]
    ours = [_pct(base), _pct(ff), _pct(fg_acc), _pct(lime_a), _pct(vibi_a) if has_vibi else "not run", _pct(fg_fid)]
    table = {"title": "FLINT's Table 1, FashionMNIST row (%), beside ours (mean ± std over seeds; LIME: VIBI's "
                      "protocol, approximator fidelity; VIBI: approximator fidelity)",
             "columns": ["", *columns],
             "rows": [["paper", *paper], ["ours", *ours],
                      ["ours, other fidelity", "", "", "", f"rationale {_pct(lime_r)}",
                       f"rationale {_pct(vibi_r)}" if has_vibi else "", ""],
                      ["ours, LIME dense in-sample (not the paper's protocol)", "", "", "",
                       _pct(dense) if dense else "not run", "", ""]]}
    v0 = next(iter(per_seed.values())).get("vibi") or {}
    vibi_how = (f"VIBI trained by jobs.train_explainer on Ray Train against FLINT-f (k = {v0.get('k')} of "
                f"{v0.get('chunk_size')}×{v0.get('chunk_size')} chunks, {v0.get('epochs')} epochs at lr "
                f"{v0.get('lr')} on {v0.get('train_rows', 0):,} training rows; its released code runs 50 epochs at "
                f"1e-4 on all 55,000), scored on the test rows" if has_vibi
                else "VIBI not run (vibi.enabled false): the row cannot be met")
    out.append(row("FLINT 2", "FLINT-g's fidelity to FLINT-f exceeds LIME's and VIBI's",
                   "FLINT-g 91.5 ± 0.1, LIME 67.3 ± 1.3, VIBI 88.4 ± 0.3 (FashionMNIST)",
                   (f"FLINT-g {_pct(fg_fid)}; LIME (VIBI protocol) approximator {_pct(lime_a)}, rationale "
                    f"{_pct(lime_r)}; VIBI approximator {_pct(vibi_a) if has_vibi else 'not run'}, rationale "
                    f"{_pct(vibi_r) if has_vibi else 'not run'}; LIME dense in-sample (not the paper's "
                    f"protocol) {_pct(dense) if dense else 'not run'}"),
                   "met" if ok2 else "not met",
                   (f"{budget}. LIME as VIBI's comparison code runs it (PAPERS.md §3): {l0['chunk_size']}×"
                    f"{l0['chunk_size']}-pixel grid chunks as features ({(28 // l0['chunk_size']) ** 2} per "
                    f"image), k = {l0['k']}, highest_weights selection, multinomial logistic-regression "
                    f"surrogate, {l0['num_samples']} samples, hidden chunks 0; on the first {l0['images']} test "
                    f"images against FLINT-f. The dense in-sample figure (quickshift superpixels, every one a "
                    f"feature, scored at the image it was fitted on) on the first {l0['dense_images']}. "
                    f"{vibi_how}. Met when FLINT-g's fidelity beats the better of each baseline's two "
                    f"fidelities beyond the seeds' spread (beyond_spread)."),
                   table=table, table1={"columns": columns, "paper": paper, "ours": ours}))

    taus = sorted(float(k.removeprefix("cns_")) for k in next(iter(per_seed.values()))["joint"]["test"]
                  if k.startswith("cns_") and not k.startswith("cns_code"))
    curve = {t: values(per_seed, "joint", "test", f"cns_{t:g}") for t in taus if t <= 5.0}
    out.append(row("FLINT 3", "CNS_g(τ), τ ∈ {1.5 … 5}, lies below SENN's at every τ",
                   "FLINT ≈ 1.4 at τ = 1.5 → ≈ 3.0 at τ = 5 (SENN ≈ 5.6 → 17.0), read from the figure",
                   "; ".join(f"τ={t:g}: {fmt_mean_std(v, digits=2)}" for t, v in curve.items()),
                   "not tested",
                   f"{budget}. SENN is not implemented here, so the comparison the claim makes cannot be run; "
                   f"the curve is FLINT-g's (|r|, the notebook's reading) on the test images."))

    # FLINT 4 is judged on the paper's conciseness grid τ ∈ {1.5 … 5} (its QuickDraw threshold, τ = 5, is the grid's
    # end); CNS at ``ablation_tau`` (the authors' FashionMNIST threshold) is shown beside it, not judged.
    at = float(s["ablation_tau"])
    grid = list(curve)
    l1_curve = {t: values(per_seed, "l1_only", "test", f"cns_{t:g}") for t in [*grid, at]}
    ent_curve = {**curve, at: values(per_seed, "joint", "test", f"cns_{at:g}")}
    l1_acc = values(per_seed, "l1_only", "test", "accuracy_f")
    matched = not_below(l1_acc, ff, tolerance=tol) and not_below(ff, l1_acc, tolerance=tol)
    fewer = bool(grid) and all(beyond_spread(l1_curve[t], ent_curve[t]) for t in grid)
    diff = {t: [a - b for a, b in zip(l1_curve[t], ent_curve[t])] for t in [*grid, at]}
    out.append(row("FLINT 4", "Entropy + L1 gives about one fewer relevant attribute than L1 alone "
                   "at matched accuracy", "about one fewer (QuickDraw)",
                   ("CNS L1 only − entropy+L1: " + "; ".join(f"τ={t:g}: {fmt_mean_std(d, digits=2)}"
                                                              for t, d in diff.items())
                    + f" (τ={at:g} not judged); accuracy f {_pct(ff)} vs L1 only {_pct(l1_acc)}"),
                   "met" if matched and fewer else "not met",
                   (f"{budget}. On FashionMNIST, not QuickDraw (not available here). L1 only = the same warm-up "
                    f"with the entropy weight 0. Met when L1-only's CNS exceeds entropy+L1's beyond the spread at "
                    f"every τ of the paper's grid {{{', '.join(f'{t:g}' for t in grid)}}} and the two FLINT-f "
                    f"accuracies are within spread + {tol:.0%} of each other.")))

    post_fid = values(per_seed, "posthoc", "test", "fidelity")
    post_acc = values(per_seed, "posthoc", "test", "accuracy_f")
    unchanged = all(abs(a - b) < 1e-9 for a, b in zip(post_acc, base))
    m, sd = mean_std(post_fid)
    floor = float(s["posthoc_min_fidelity"])
    out.append(row("FLINT 5", "Post hoc (f frozen) reaches high fidelity without changing f's "
                   "accuracy", "high fidelity, f unchanged (no FashionMNIST figure in Table 1)",
                   f"fidelity {_pct(post_fid)}; f accuracy {_pct(post_acc)} (BASE-f before: {_pct(base)})",
                   "met" if unchanged and m - sd >= floor else "not met",
                   (f"{budget}. Post hoc trains Ψ, h, d from the activation store of the frozen BASE-f of the "
                    f"same seed. Met when f's test accuracy equals BASE-f's for every seed and mean − std of "
                    f"the fidelity ≥ {floor:.0%}.")))

    checks = [r["pictures_check"] for r in per_seed.values()]
    ok_pairs, total = sum(c["pairs_ok"] for c in checks), sum(c["pairs_total"] for c in checks)
    share = ok_pairs / total if total else 0.0
    out.append(row("FLINT 6", "MAS and AM+PI pictures per relevant (class, attribute) pair "
                   "(the 20-user study is not reproducible here)", "pictures; user study 77.5% / 83.7%",
                   f"{ok_pairs} of {total} pictured pairs show their property ({share:.0%})",
                   "met" if total and share >= 0.8 else "not met",
                   (f"{budget}. Up to {s['pictures']['max_pairs']} pairs per seed (τ of the job config). A pair "
                    f"shows its property when its PNG exists, φ_j is higher on its MAS images than on "
                    f"{s['pictures']['random_images']} random training images, AM+PI raised φ_j above its "
                    f"κ·x₀ start, and φ_j is higher on the class's test images than on the other classes'. "
                    f"Met when ≥ 80% of pairs pass. The user study is not tested.")))
    return out
