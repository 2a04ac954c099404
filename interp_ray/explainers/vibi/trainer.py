"""VIBI's epoch trainer (the ``EpochTrainer`` protocol that jobs/train_explainer.py drives on Ray Train, and ``fit``
runs in process): steps over store rows of ``input`` and f's ``probabilities``, then the validation figures.

Loss per image, as the released code: CE(q(· | x ⊙ z), argmax f(x)) in bits + β · k · KL(prior term), z the
relaxed k-hot sample. The randomness of a step is drawn from a generator seeded by (seed, epoch), never the global
one, so an epoch is reproducible alone (after a restart too).

Validation, with the deterministic top-k rationale of the evaluated weights (the moving average when ``ema_decay``):
``val_approximator_fidelity`` = share of rows with argmax q(· | x ⊙ z_topk) = argmax f(x); and, when f is given,
``val_rationale_fidelity`` = share with argmax f(x ⊙ z_topk) = argmax f(x) (the masked chunks set to 0).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp_ray.explainers.base import Batch
from interp_ray.explainers.vibi.config import VibiTrainConfig
from interp_ray.explainers.vibi.networks import VibiNet, prior_kl
from interp_ray.models.base import INPUT_LAYER
from interp_ray.training import ResumableTrainer

LN2 = math.log(2)


def rows_to_tensors(batch: Batch, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x N×C×H×W float32, f's class N int64) of a store batch (``input`` and ``probabilities``)."""
    x = torch.as_tensor(np.array(batch[INPUT_LAYER], dtype=np.float32), device=device)
    y = torch.as_tensor(np.asarray(batch["probabilities"]).argmax(1), dtype=torch.int64, device=device)
    return x, y


class VibiTrainer(ResumableTrainer):
    select = "val_infidelity"
    STATE_MODULE, STATE_KEPT = "net", ("ema", "best_score", "best_epoch", "best_state")

    def __init__(self, net: VibiNet, settings: VibiTrainConfig, *, device: torch.device | str = "cpu",
                 wrap: Callable[[nn.Module], nn.Module] | None = None, black_box: nn.Module | None = None):
        self.device = torch.device(device)
        self.net, self.settings, self.black_box = net, settings, black_box
        self.model = wrap(net) if wrap is not None else net.to(self.device)
        self.epochs = settings.epochs
        self.opt = torch.optim.Adam(net.parameters(), lr=settings.lr, betas=(0.5, 0.999))
        self.ema = copy.deepcopy(net.state_dict()) if settings.ema_decay is not None else None
        self.best_score, self.best_epoch = -1.0, -1
        self.best_state = self.evaluated_state()

    def evaluated_state(self) -> dict[str, torch.Tensor]:
        src = self.ema if self.ema is not None else self.net.state_dict()
        return {k: v.detach().to("cpu").clone() for k, v in src.items()}

    def _update_ema(self) -> None:
        decay = self.settings.ema_decay
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    self.ema[k].copy_(v)

    def losses(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg, s = self.net.cfg, self.settings
        uniform = torch.rand((len(x), s.samples, cfg.k, self.net.num_chunks), generator=gen).to(x.device)
        log_q, log_p, _ = self.model(x, uniform)
        class_loss = F.nll_loss(log_q, y) / LN2
        info_loss = cfg.k * prior_kl(log_p, cfg.prior_kl).mean()
        return {"loss": class_loss + s.beta * info_loss, "class_loss": class_loss, "info_loss": info_loss,
                "agree": (log_q.argmax(1) == y).float().sum()}

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]:
        s = self.settings
        gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
        self.model.train()
        sums = {"loss": 0.0, "class_loss": 0.0, "info_loss": 0.0, "agree": 0.0}
        seen = 0
        join = self.model.join() if isinstance(self.model, nn.parallel.DistributedDataParallel) else \
            contextlib.nullcontext()
        with join:
            for batch in train:
                x, y = rows_to_tensors(batch, self.device)
                order = torch.randperm(len(x), generator=gen).to(x.device)
                for lo in range(0, len(x), s.batch_size):
                    idx = order[lo:lo + s.batch_size]
                    out = self.losses(x[idx], y[idx], gen)
                    self.opt.zero_grad(set_to_none=True)
                    out["loss"].backward()
                    self.opt.step()
                    if self.ema is not None:
                        self._update_ema()
                    for key in sums:
                        sums[key] += float(out[key].detach()) * (1 if key == "agree" else len(idx))
                    seen += len(idx)
        row = {"epoch": epoch, "rows_seen": seen, "lr": s.lr,
               **{f"train_{k}": v / max(seen, 1) for k, v in sums.items() if k != "agree"},
               "train_relaxed_fidelity": sums["agree"] / max(seen, 1)}
        row.update(self.evaluate(val))
        if row["val_approximator_fidelity"] > self.best_score:
            self.best_score, self.best_epoch, self.best_state = row["val_approximator_fidelity"], epoch, \
                self.evaluated_state()
        row["best_epoch"] = self.best_epoch
        return row

    @torch.no_grad()
    def evaluate(self, val: Iterable[Batch]) -> dict[str, float]:
        """The validation figures of the evaluated weights (module docstring)."""
        net = copy.deepcopy(self.net).eval()
        if self.ema is not None:
            net.load_state_dict(self.ema)
        cfg = net.cfg
        n = approx = rationale = 0
        class_loss = info_loss = 0.0
        for batch in val:
            x, y = rows_to_tensors(batch, self.device)
            log_q, log_p, z = net(x)
            class_loss += float(F.nll_loss(log_q, y, reduction="sum")) / LN2
            info_loss += cfg.k * float(prior_kl(log_p, cfg.prior_kl).sum())
            approx += int((log_q.argmax(1) == y).sum())
            if self.black_box is not None:
                rationale += int((self.black_box(net.masked(x, z)).argmax(1) == y).sum())
            n += len(x)
        out = {"val_rows": n, "val_class_loss": class_loss / max(n, 1), "val_info_loss": info_loss / max(n, 1),
               "val_approximator_fidelity": approx / max(n, 1)}
        out["val_loss"] = out["val_class_loss"] + self.settings.beta * out["val_info_loss"]
        out["val_infidelity"] = 1.0 - out["val_approximator_fidelity"]
        if self.black_box is not None:
            out["val_rationale_fidelity"] = rationale / max(n, 1)
        return out

