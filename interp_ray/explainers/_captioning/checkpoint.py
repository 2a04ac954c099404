"""A captioning explainer's checkpoint: ``interp_ray.checkpoint``'s format (config.json + weights) with its
vocabulary beside the weights (``vocab.json``) and whatever other files the method keeps. ``read_captioner`` is the
preamble both methods' ``load`` share: the right kind and method, the files present, the vocabulary read and
checked against the digest config.json recorded when the weights were trained."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interp_ray.checkpoint import LoadedCheckpoint, read_explainer, save_checkpoint
from interp_ray.errors import UserError
from interp_ray.text import Vocabulary

KIND = "explainer"
VOCAB_FILE = "vocab.json"


def save_captioner(path: str, *, config: dict[str, Any], state_dict: dict[str, torch.Tensor], vocab: Vocabulary,
                   files: dict[str, bytes] | None = None) -> str:
    """Write the checkpoint (``config`` must name the method under ``explainer`` and record ``vocab_digest``)."""
    return save_checkpoint(path, kind=KIND, config=config, state_dict=state_dict,
                           files={VOCAB_FILE: vocab.to_json().encode(), **(files or {})})


def read_captioner(path: str, method: str, *, required: Sequence[str] = ()) -> tuple[LoadedCheckpoint, Vocabulary]:
    """(the checkpoint, its vocabulary) of a ``method`` explainer, or a UserError naming what is wrong with it."""
    ckpt = read_explainer(path, method, required=required)
    if VOCAB_FILE not in ckpt.files:
        raise UserError(f"checkpoint {path} has no {VOCAB_FILE}: cannot map token ids to words")
    return ckpt, Vocabulary.from_json(ckpt.files[VOCAB_FILE], source=f"{path}/{VOCAB_FILE}")


def check_vocab_digest(vocab: Vocabulary, config: dict[str, Any], path: str) -> None:
    """The vocabulary file is the one the weights were trained with (a same-size edit passes every shape check)."""
    if vocab.digest != config.get("vocab_digest"):
        raise UserError(f"vocabulary mismatch in {path}: {VOCAB_FILE} is not the vocabulary the weights were "
                        "trained with (its digest differs from config.json's)")
