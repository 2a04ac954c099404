"""Plain-PyTorch training helpers. Ray Train's ``train_func`` is built from these; they also run without Ray."""

from __future__ import annotations

import hashlib
import random
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes: equal digests ⇔ bit-identical tensors."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap augmentation for small images."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, [max_shift] * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,)).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (n,)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device, *,
                max_shift: int = 0) -> dict[str, float]:
    """One pass over ``loader`` of (images, labels); returns mean loss, accuracy and the number of samples seen."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images = random_shift(images, max_shift)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "samples": seen}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "samples": seen}


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, schedule: str, epochs: int):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def distributed_sampler(dataset, *, world_size: int, rank: int, shuffle: bool, seed: int):
    """The same sampler with or without Ray: with world_size 1 it is a seeded shuffle of the whole set."""
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                               seed=seed, drop_last=False)


def gather_from_ranks(value: Any, world: int) -> list[Any]:
    """Each rank's ``value``, in rank order (the jobs record it to prove every rank trained); [value] alone."""
    if world == 1 or not torch.distributed.is_initialized():
        return [value]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


class ResumableTrainer:
    """``state_dict`` / ``load_state_dict`` of an epoch trainer (``interp_ray.explainers.base.EpochTrainer``) whose
    restart state is one module's weights, its optimiser ``opt`` and a few plain attributes (best value, epoch and
    weights, lr …). The optimiser's own state carries its param groups' lr, so a restore puts that back too.

    STATE_MODULE: the attribute holding the trained module (its weights are saved under that name);
    STATE_KEPT:   the other attributes, saved and restored as they are.
    """

    STATE_MODULE: ClassVar[str]
    STATE_KEPT: ClassVar[tuple[str, ...]]

    def state_dict(self) -> dict[str, Any]:
        return {self.STATE_MODULE: getattr(self, self.STATE_MODULE).state_dict(), "optimizer": self.opt.state_dict(),
                **{k: getattr(self, k) for k in self.STATE_KEPT}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        getattr(self, self.STATE_MODULE).load_state_dict(state[self.STATE_MODULE])
        self.opt.load_state_dict(state["optimizer"])
        for k in self.STATE_KEPT:
            setattr(self, k, state[k])
