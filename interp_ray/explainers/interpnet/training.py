"""Algorithm 1 of the paper as one epoch trainer: the classifier head (``HeadTrainer``), then, frozen, the explainer
network (the shared ``CaptionTrainer``) on r(x). ``state_digest`` proves the classifier did not move."""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp_ray.explainers._captioning.training import CaptionTrainer, PairBatch, pair_tokens
from interp_ray.explainers.base import Batch
from interp_ray.explainers.interpnet.config import ClassifierTrainConfig, DecoderTrainConfig
from interp_ray.explainers.interpnet.networks import FeatureMLP, sentence_loss
from interp_ray.training import ResumableTrainer, state_digest

if TYPE_CHECKING:
    from interp_ray.explainers.interpnet.explainer import InterpNET


class HeadTrainer(ResumableTrainer):
    """Step 1 of Algorithm 1, streamed: the classifier head on (h_0, label) — Adam, the best epoch by validation
    accuracy, the lr halved after each epoch without improvement. ``features(batch) -> (x, y)`` tensors."""

    STATE_MODULE, STATE_KEPT = "head", ("lr", "best_acc", "best_epoch", "best_state")

    def __init__(self, head: FeatureMLP, features: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
                 settings: ClassifierTrainConfig, *, model: nn.Module | None = None):
        self.head, self.model = head, model if model is not None else head
        self.features, self.settings = features, settings
        self.lr = settings.lr
        self.opt = torch.optim.Adam(head.parameters(), lr=self.lr)
        self.best_acc, self.best_epoch = -1.0, -1
        self.best_state = copy.deepcopy(head.state_dict())

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + epoch)
        self.model.train()
        total, seen = 0.0, 0
        join = self.model.join() if isinstance(self.model, nn.parallel.DistributedDataParallel) else \
            contextlib.nullcontext()
        with join:
            for batch in train:
                x, y = self.features(batch)
                order = torch.randperm(len(x), generator=gen)
                for lo in range(0, len(x), self.settings.batch_size):
                    idx = order[lo:lo + self.settings.batch_size].to(x.device)
                    loss = F.cross_entropy(self.model(x[idx]), y[idx])
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self.opt.step()
                    total += loss.item() * len(idx)
                    seen += len(idx)
        self.head.eval()
        correct = n = 0
        with torch.no_grad():
            for batch in val:
                x, y = self.features(batch)
                correct += int((self.head(x).argmax(1) == y).sum())
                n += len(y)
        val_acc = correct / n if n else 0.0
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch, self.best_state = val_acc, epoch, copy.deepcopy(self.head.state_dict())
        else:
            self.lr /= 2
            for g in self.opt.param_groups:
                g["lr"] = self.lr
        return {"epoch": epoch, "phase": "classifier", "train_loss": total / max(seen, 1), "val_accuracy": val_acc,
                "lr": self.lr, "rows_seen": seen}



def _pair_loss(model: nn.Module, pb: PairBatch, idx: np.ndarray) -> dict[str, torch.Tensor]:
    r = pb.rows["r"]
    tin, tout, lengths, item = pair_tokens(pb.pairs, idx, r.device)
    return {"loss": sentence_loss(model(tin, r[torch.from_numpy(item).to(r.device)]), tout, lengths)}


class InterpNETTrainer:
    """Algorithm 1 as one epoch trainer: ``classifier_train.epochs`` epochs of the classifier head (head mode, unless
    it is trained already), then the head frozen at its best epoch and ``train.epochs`` epochs of the explainer
    network (``CaptionTrainer``) on r(x) computed from the frozen head batch by batch (stop-gradient: no gradient
    reaches the classifier). The best epoch is the explainer network's lowest validation loss."""

    select = "val_loss"

    def __init__(self, explainer: "InterpNET", classifier_train: ClassifierTrainConfig, train: DecoderTrainConfig,
                 *, device: torch.device | str = "cpu", wrap: Callable[[nn.Module], nn.Module] | None = None):
        wrap = wrap or (lambda m: m.to(device))
        self.explainer, self.device = explainer, torch.device(device)
        ex = explainer
        self.head_epochs = classifier_train.epochs if ex.head is not None and not ex.classifier_trained else 0
        self.epochs = self.head_epochs + train.epochs
        self.head = None
        if self.head_epochs:
            ex.head.requires_grad_(True)
            self.head = HeadTrainer(ex.head, ex.head_features, classifier_train, model=wrap(ex.head))
        elif ex.head is not None:
            ex.head.to(self.device)
        self.decoder = CaptionTrainer(
            ex.decoder, prepare=lambda b: ex.pair_batch(b, self.device), loss=_pair_loss, epochs=train.epochs,
            batch_size=train.batch_size, lr=train.lr, grad_clip=train.grad_clip,
            halve_on_plateau=train.halve_on_plateau, seed=train.seed, select="loss", model=wrap(ex.decoder))

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]:
        if epoch < self.head_epochs:
            return self.head.run_epoch(epoch, train, val)
        if not self.explainer.classifier_trained:
            self._freeze()
        row = self.decoder.run_epoch(epoch - self.head_epochs, train, val)
        return {**row, "epoch": epoch, "phase": "explainer", "best_epoch": row["best_epoch"] + self.head_epochs,
                "classifier_digest": state_digest(self.explainer.classifier_state())}

    def _freeze(self) -> None:
        if self.head is not None:
            self.explainer.head.load_state_dict(self.head.best_state)
        self.explainer.freeze_classifier()

    @property
    def best_state(self) -> dict[str, Any]:
        return {"classifier": self.explainer.classifier_state(), "decoder": self.decoder.best_state}

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict() if self.head is not None else None,
                "decoder": self.decoder.state_dict(), "classifier": self.explainer.classifier_state(),
                "frozen": self.explainer.classifier_trained}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.head is not None and state["head"] is not None:
            self.head.load_state_dict(state["head"])
        self.explainer.load_classifier_state(state["classifier"])
        self.decoder.load_state_dict(state["decoder"])
        if state["frozen"]:
            self.explainer.freeze_classifier()
