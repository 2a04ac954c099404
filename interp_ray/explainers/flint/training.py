"""FLINT's training driver: the optimiser, one epoch, evaluation, and the Ray-free loop (``train_local``).

Everything here is plain PyTorch; ``jobs/train_flint.py`` runs ``flint_train_epoch`` inside Ray Train. Data and the
predictor f are handed in (``FlintInputs``): reading datasets and checkpoints is the job's (``jobs/flint_inputs.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers.flint.config import TERMS, FlintJobConfig, FlintOptimConfig, FlintSection, ScheduleSection
from interp_ray.explainers.flint.interpretation import (collect_steps, compute_global_relevance, max_activating,
                                                        pair_rows, relevance_subset, store_global_relevance)
from interp_ray.explainers.flint.losses import flint_losses, total_loss
from interp_ray.explainers.flint.model import (FlintModel, Step, build_flint, forward_step, image_steps,
                                               resolved_flint_spec)
from interp_ray.models import Classifier
from interp_ray.models.base import INPUT_LAYER


def make_flint_optimizer(model: nn.Module, opt_cfg: FlintOptimConfig):
    """Adam over every trainable parameter (f, Ψ, h, d jointly; Ψ, h, d post-hoc), optional cosine / step lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
    steps = sorted(opt_cfg.lr_steps)

    def factor(epoch_index: int) -> float:  # LambdaLR's argument is the number of scheduler steps taken (0-based)
        f = 0.5 * (1 + math.cos(math.pi * epoch_index / opt_cfg.epochs)) if opt_cfg.schedule == "cosine" else 1.0
        for first, lr in steps:
            if epoch_index + 1 >= first:
                f = lr / opt_cfg.lr
        return f

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------------------------------------------------------
# One epoch, evaluation — plain PyTorch, used by Ray Train workers and by ``train_local``
# ---------------------------------------------------------------------------------------------------------------

def row_step(batch: Mapping[str, np.ndarray], layers: Sequence[str]) -> Step:
    """One batch of activation-store rows as a post-hoc step: the input (the store's ``input`` column: what d
    reconstructs), the label, and f's taps. f's logits are the log of the stored probabilities: softmax gives the
    probabilities back, and they are all the fidelity term and the accuracy of f read of f."""
    def tensor(a: Any, dtype: Any) -> torch.Tensor:   # a copy: Ray Data hands out read-only views
        return torch.from_numpy(np.array(a, dtype=dtype, copy=True))

    taps = {name: tensor(batch[name], np.float32) for name in layers}
    probs = np.asarray(batch["probabilities"], dtype=np.float32)
    taps["logits"] = torch.from_numpy(np.log(np.maximum(probs, np.finfo(np.float32).tiny)))
    return tensor(batch[INPUT_LAYER], np.float32), tensor(batch["label"], np.int64), taps


def row_steps(batches: Iterable[Mapping[str, np.ndarray]], layers: Sequence[str]) -> Iterator[Step]:
    for b in batches:
        yield row_step(b, layers)


def store_columns(layers: Sequence[str]) -> list[str]:
    """The store columns post-hoc FLINT trains from: f's taps (``layers``), the input, f's output and the label."""
    return ["index", "label", "probabilities", INPUT_LAYER, *layers]


def flint_train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                      weights: dict[str, float], *, recon_loss: str = "mse", max_shift: int = 0) -> dict[str, float]:
    """One pass over ``loader`` of (images, labels), minimising Σ weights·terms. ``model`` may be DDP-wrapped."""
    return flint_train_steps(model, image_steps(loader, max_shift), optimizer, device, weights,
                             recon_loss=recon_loss)


def flint_train_steps(model: nn.Module, steps: Iterable[Step], optimizer: torch.optim.Optimizer,
                      device: torch.device, weights: dict[str, float], *, recon_loss: str = "mse"
                      ) -> dict[str, float]:
    """One pass over ``steps`` (``image_steps`` or, post hoc, ``row_steps`` of the store), minimising Σ
    weights·terms."""
    model.train()
    sums = {t: 0.0 for t in (*TERMS, "loss")}
    correct_f = correct_g = agree = seen = 0
    for images, labels, taps in steps:
        x, y = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        out = forward_step(model, x, taps, device)
        terms = flint_losses(out, x, y, recon_loss=recon_loss)
        loss = total_loss(terms, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(y)
        for t in TERMS:
            sums[t] += terms[t].item() * n
        sums["loss"] += loss.item() * n
        pf, pg = out.logits.argmax(1), out.interp_logits.argmax(1)
        correct_f += (pf == y).sum().item()
        correct_g += (pg == y).sum().item()
        agree += (pf == pg).sum().item()
        seen += n
    s = max(seen, 1)
    return {**{k: v / s for k, v in sums.items()}, "accuracy_f": correct_f / s, "accuracy_g": correct_g / s,
            "fidelity": agree / s, "samples": seen}


def flint_evaluate(model: FlintModel, loader, device: torch.device | str = "cpu", *, recon_loss: str = "mse",
                   weights: dict[str, float] | None = None) -> dict[str, float]:
    """Accuracy of f and g, fidelity (argmax g = argmax f), top-5 fidelity and the mean of each loss term."""
    return flint_evaluate_steps(model, image_steps(loader), device, recon_loss=recon_loss, weights=weights)


@torch.no_grad()
def flint_evaluate_steps(model: FlintModel, steps: Iterable[Step], device: torch.device | str = "cpu", *,
                         recon_loss: str = "mse", weights: dict[str, float] | None = None) -> dict[str, float]:
    """``flint_evaluate`` over steps (images, or post hoc the store's rows)."""
    was = model.training
    model.eval()
    sums = {t: 0.0 for t in TERMS}
    cf = cg = agree = top5 = seen = 0
    try:
        for images, labels, taps in steps:
            x, y = images.to(device), labels.to(device)
            out = forward_step(model, x, taps, device)
            terms = flint_losses(out, x, y, recon_loss=recon_loss)
            n = len(y)
            for t in TERMS:
                sums[t] += terms[t].item() * n
            pf, pg = out.logits.argmax(1), out.interp_logits.argmax(1)
            k = min(5, out.interp_logits.shape[1])
            top5 += (out.interp_logits.topk(k, 1).indices == pf[:, None]).any(1).sum().item()
            cf += (pf == y).sum().item()
            cg += (pg == y).sum().item()
            agree += (pf == pg).sum().item()
            seen += n
    finally:
        model.train(was)
    s = max(seen, 1)
    res = {**{t: v / s for t, v in sums.items()}, "accuracy_f": cf / s, "accuracy_g": cg / s, "fidelity": agree / s,
           "fidelity_top5": top5 / s, "samples": seen}
    if weights is not None:
        res["loss"] = sum(weights.get(t, 0.0) * res[t] for t in TERMS)
    return res


# ---------------------------------------------------------------------------------------------------------------
# Ray-free training
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class FlintInputs:
    """What FLINT trains on, loaded by the caller (``jobs.flint_inputs.flint_inputs``): f (built fresh for joint and
    BASE, the frozen checkpoint post hoc), its model spec and checkpoint digest, and the splits."""

    predictor: Classifier
    predictor_spec: dict[str, Any]   # {"name", "options"} of f
    predictor_digest: str | None     # post hoc: the checkpoint's digest
    train_ds: Any = None             # None where the rows come from the store (a post-hoc Ray Train worker)
    val_ds: Any = None


@dataclass
class FlintSetup:
    """Everything a training loop needs, built the same way with or without Ray."""

    model: FlintModel
    spec: dict[str, Any]             # resolved FLINT architecture
    predictor_spec: dict[str, Any]   # {"name", "options"} of f
    predictor_digest: str | None
    schedule: ScheduleSection
    train_ds: Any                    # None where the rows come from the store (a post-hoc Ray Train worker)
    val_ds: Any


def setup(cfg: FlintJobConfig, inputs: FlintInputs) -> FlintSetup:
    """Ψ/h/d sized for ``inputs.predictor``, and the schedule. Ψ/h/d draw their initial weights from the global
    random state right after f's: ``flint_inputs`` seeds it (``train.seed``) before building f, so one config
    gives one initial model on every worker and in every run."""
    spec = resolved_flint_spec(inputs.predictor, cfg.flint)
    return FlintSetup(build_flint(inputs.predictor, spec), spec, inputs.predictor_spec, inputs.predictor_digest,
                      cfg.flint.resolved_schedule(), inputs.train_ds, inputs.val_ds)


def posthoc_layers(spec: Mapping[str, Any]) -> list[str]:
    """The layers post-hoc FLINT's store holds: f's taps and the input (what d reconstructs)."""
    return [*spec["layers"], INPUT_LAYER]


def check_posthoc_stores(stores: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> None:
    """Post hoc trains from the train and val stores of f's taps and the input; anything else is a UserError."""
    if not stores or not {"train", "val"} <= set(stores):
        raise UserError("post-hoc FLINT trains from the activation store: give its train and val stores "
                        "(jobs.train_flint.posthoc_stores extracts them)")
    for role in ("train", "val"):
        missing = [c for c in store_columns(spec["layers"]) if c not in stores[role].columns]
        if missing:
            raise UserError(f"the {role} store {stores[role].location} lacks {', '.join(missing)}; post-hoc FLINT "
                            f"reads {', '.join(posthoc_layers(spec))}")


def train_local(cfg: FlintJobConfig, inputs: FlintInputs, *, device: torch.device | str | None = None, log=None,
                stores: Mapping[str, Any] | None = None) -> tuple[FlintSetup, list[dict[str, Any]]]:
    """Train without Ray: the same epoch step as a 1-worker Ray Train run, on ``inputs`` (f and the splits). Joint
    and BASE: over images, with the same sampler. Post hoc: over the ``stores`` (train and val ``ActivationStore``s
    of ``posthoc_layers``), with the same local shuffle buffer a worker has."""
    from interp_ray.devices import pick_device
    from interp_ray.store import shuffled
    from interp_ray.training import distributed_sampler

    dev = torch.device(device) if device is not None else pick_device(cfg.scaling.use_gpu)
    st = setup(cfg, inputs)
    model = st.model.to(dev)
    opt, sched = make_flint_optimizer(model, cfg.train)
    posthoc = cfg.flint.mode == "posthoc"
    if posthoc:
        check_posthoc_stores(stores, st.spec)
        columns, rows = store_columns(st.spec["layers"]), cfg.train.batch_size
    else:
        sampler = distributed_sampler(st.train_ds, world_size=1, rank=0, shuffle=True, seed=cfg.train.seed)
        loader, val_loader = st.train_ds.loader(cfg.train.batch_size, sampler=sampler), st.val_ds.loader(512)
    history = []
    for epoch in range(cfg.train.epochs):
        weights = st.schedule.weights(epoch + 1)
        t0 = time.perf_counter()
        if posthoc:
            batches = shuffled(stores["train"].iter_batches(rows, columns=columns), cfg.stream.shuffle_buffer,
                               cfg.train.seed * 7919 + epoch, rows)
            tr = flint_train_steps(model, row_steps(batches, st.spec["layers"]), opt, dev, weights,
                                   recon_loss=st.spec["recon_loss"])
        else:
            sampler.set_epoch(epoch)
            tr = flint_train_epoch(model, loader, opt, dev, weights, recon_loss=st.spec["recon_loss"],
                                   max_shift=cfg.train.augment_shift)
        sched.step()
        if posthoc:
            va = flint_evaluate_steps(model, row_steps(stores["val"].iter_batches(512, columns=columns),
                                                       st.spec["layers"]),
                                      dev, recon_loss=st.spec["recon_loss"], weights=weights)
        else:
            va = flint_evaluate(model, val_loader, dev, recon_loss=st.spec["recon_loss"], weights=weights)
        row = epoch_row(epoch, 0, tr, va, weights, time.perf_counter() - t0, 1)
        history.append(row)
        if log:
            log(row)
    return st, history


def epoch_row(epoch: int, attempt: int, tr: dict, va: dict, weights: dict, seconds: float,
              world: int) -> dict[str, Any]:
    return {"epoch": epoch, "attempt": attempt, "weights": dict(weights),
            "train_loss": tr["loss"], **{f"train_{t}": tr[t] for t in TERMS},
            "train_accuracy_f": tr["accuracy_f"], "train_fidelity": tr["fidelity"],
            "val_loss": va["loss"], **{f"val_{t}": va[t] for t in TERMS},
            "val_accuracy_f": va["accuracy_f"], "val_accuracy_g": va["accuracy_g"], "val_fidelity": va["fidelity"],
            "epoch_s": seconds, "world_size": world}


def finalize(model: FlintModel, train_ds, section: FlintSection, *, seed: int = 21,
             device: torch.device | str = "cpu", max_pairs: int = 40) -> dict[str, Any]:
    """After training: global relevance (into the model's buffer) and each attribute's maximum-activating samples,
    both on the same random training subset, as the code does. Returns the MAS (indices into ``train_ds`` and
    images, J×l[×C×H×W]) for the checkpoint, and ``pairs``: the MAS of each relevant (class, attribute) pair of the
    global interpretation at ``section.tau`` (at most ``max_pairs``), [(c, j, l×C×H×W)], for ``grow_pictures``."""
    rel, idx, data = compute_global_relevance(model, train_ds, samples=section.relevance_samples, seed=seed,
                                              device=device)
    mas_idx = np.stack([idx[max_activating(data["phi"], None, j, count=section.n_mas)]
                        for j in range(model.n_attributes)])  # J×l rows of train_ds
    images = train_ds.get_batch(mas_idx.reshape(-1))["image"]
    mas = images.reshape(*mas_idx.shape, *images.shape[1:])
    pairs = [(c, j, train_ds.get_batch(idx[rows])["image"])
             for c, j, rows in pair_rows(data["phi"], data["labels"], rel, section.tau, count=section.n_mas,
                                         max_pairs=max_pairs)]
    return {"mas_indices": mas_idx, "mas_images": mas, "pairs": pairs}


def finalize_from_store(model: FlintModel, store: Any, section: FlintSection, *, seed: int = 21,
                        device: torch.device | str = "cpu", batch_rows: int = 512, max_pairs: int = 40
                        ) -> dict[str, Any]:
    """``finalize`` post hoc: the same random subset of training rows, read from the train store (f's taps and the
    input) in one streaming pass instead of running f over images."""
    idx = relevance_subset(len(store), section.relevance_samples, seed)
    picked: list[dict[str, np.ndarray]] = []
    for b in store.iter_batches(batch_rows, columns=store_columns(model.layers)):
        keep = np.isin(np.asarray(b["index"]), idx)
        if keep.any():
            picked.append({k: np.asarray(v)[keep] for k, v in b.items()})
    rows = {k: np.concatenate([p[k] for p in picked]) for k in picked[0]}
    order = np.argsort(rows["index"], kind="stable")   # the subset in index order, as ``finalize`` has it
    rows = {k: v[order] for k, v in rows.items()}
    steps = row_steps(({k: v[lo:lo + batch_rows] for k, v in rows.items()} for lo in range(0, len(order), batch_rows)),
                      model.layers)
    data = collect_steps(model, steps, device)
    rel = store_global_relevance(model, data)
    pos = np.stack([max_activating(data["phi"], None, j, count=section.n_mas) for j in range(model.n_attributes)])
    images = rows[INPUT_LAYER][pos.reshape(-1)]
    pairs = [(c, j, rows[INPUT_LAYER][r]) for c, j, r in pair_rows(data["phi"], data["labels"], rel, section.tau,
                                                                     count=section.n_mas, max_pairs=max_pairs)]
    return {"mas_indices": rows["index"][pos], "mas_images": images.reshape(*pos.shape, *images.shape[1:]),
            "pairs": pairs}
