"""What the captioner trains on: clip rows as frame features, masks and topic vectors, (clip, sentence) pairs, and
the per-pair losses the shared ``CaptionTrainer`` steps on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers._captioning.training import PairBatch, make_pairs, pair_tokens
from interp_ray.explainers.semantic.config import SemanticConfig
from interp_ray.explainers.semantic.networks import caption_losses
from interp_ray.text import Vocabulary


@dataclass
class CaptionData:
    """Arrays a trainer needs (picklable, for the object store): one row per item, one per (item, sentence)."""

    features: np.ndarray     # N × K × D float32
    mask: np.ndarray         # N × K bool
    topics: np.ndarray       # N × T float32
    item: np.ndarray         # P int64: the item of each pair
    tokens: np.ndarray       # P × (L + 2) int64: <start> w… <end> <pad>…
    lengths: np.ndarray      # P int64: words + <end>

    def __len__(self) -> int:
        return len(self.item)


def make_caption_data(features: np.ndarray, mask: np.ndarray, topics: np.ndarray,
                      sentences: Sequence[Sequence[str]], vocab: Vocabulary, max_len: int) -> CaptionData:
    pairs = make_pairs(np.zeros((len(sentences), 1), np.float32), sentences, vocab, max_len)
    return CaptionData(np.ascontiguousarray(features, dtype=np.float32), np.asarray(mask, dtype=bool),
                       np.asarray(topics, dtype=np.float32), pairs.image, pairs.tokens, pairs.lengths)


def batch_tensors(data: CaptionData, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    lengths = data.lengths[idx]
    width = int(lengths.max())
    tok = torch.from_numpy(data.tokens[idx, :width + 1])
    item = data.item[idx]
    return {"feats": torch.from_numpy(data.features[item]).to(device),
            "mask": torch.from_numpy(data.mask[item]).to(device),
            "topics": torch.from_numpy(data.topics[item]).to(device),
            "tin": tok[:, :-1].to(device), "tout": tok[:, 1:].to(device),
            "lengths": torch.from_numpy(lengths).to(device)}


def batch_losses(model: nn.Module, b: Mapping[str, torch.Tensor], cfg: SemanticConfig) -> dict[str, torch.Tensor]:
    logits, alphas, s_hat = model(b["feats"], b["mask"], b["tin"])
    return caption_losses(logits, alphas, s_hat, b["tout"], b["lengths"], b["topics"], b["mask"], cfg)


def frame_features(column: Any) -> np.ndarray:
    """A store's per-clip frame column (N × K × C × …, one layer of every frame) as N × K × C frame features: any
    spatial axes averaged, as the paper pools GoogLeNet's last conv block."""
    a = np.asarray(column, dtype=np.float32)
    if a.ndim < 3:
        raise UserError(f"frame features must be N × K × D (or N × K × C × H × W), got shape {a.shape}")
    return a.reshape(*a.shape[:3], -1).mean(3) if a.ndim > 3 else a


def pair_losses(model: nn.Module, pb: PairBatch, idx: np.ndarray) -> dict[str, torch.Tensor]:
    feats = pb.rows["feats"]
    tin, tout, lengths, item = pair_tokens(pb.pairs, idx, feats.device)
    item = torch.from_numpy(item).to(feats.device)
    b = {"feats": feats[item], "mask": pb.rows["mask"][item], "topics": pb.rows["topics"][item], "tin": tin,
         "tout": tout, "lengths": lengths}
    cfg = model.module.cfg if isinstance(model, nn.parallel.DistributedDataParallel) else model.cfg
    return batch_losses(model, b, cfg)


LOSS_METRICS = ("loss", "nll", "interp", "attention")
