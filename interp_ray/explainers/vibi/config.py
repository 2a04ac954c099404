"""VIBI's typed settings (a leaf: nothing here imports torch or another part of the method).

Defaults are the released code's (``SeojinBang/VIBI``, ``main.py`` and ``mnist/explainer.py``) unless a comment says
otherwise: chunks of 2×2 pixels, k = 4, Gumbel-softmax temperature 0.5, β = 0.1, Adam at lr 1e-4 with betas
(0.5, 0.999) and batch 50, one relaxed sample per image, evaluation with an exponential moving average of the weights
(decay 0.999).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from interp_ray.config import DataConfig, LearnedJobConfig, Section, StoreSource
from interp_ray.models.base import INPUT_LAYER

METHOD = "vibi"


class VibiConfig(Section):
    """What the explainer is (saved in its checkpoint)."""

    chunk_size: int = Field(2, gt=0)             # a chunk is chunk_size × chunk_size pixels (all channels)
    k: int = Field(4, gt=0)                      # chunks kept per image
    tau: float = Field(0.5, gt=0)                # temperature of the relaxed (Gumbel-softmax) subset sample
    selector_width: int = Field(8, gt=0)         # the explainer network: conv widths w, 2w, then one score per chunk
    approximator_width: int = Field(32, gt=0)    # the approximator: conv widths w, 2w, then a linear classifier
    # The prior term. The paper writes KL(p(z|x) ‖ r(z)) with r uniform over the chunks; the released code computes
    # nn.KLDivLoss(log p, r) = KL(r ‖ p). Both pull p towards uniform; "uniform_to_p" keeps β's meaning as in the
    # code whose defaults these are.
    prior_kl: Literal["uniform_to_p", "p_to_uniform"] = "uniform_to_p"


class VibiTrainConfig(Section):
    """The released code's schedule: Adam(betas 0.5, 0.999) at a constant lr (its ExponentialLR step is commented
    out), loss = CE(approximator, f's class) in bits + β·k·KL; the best epoch is the one whose top-k approximator
    fidelity on the validation rows is highest (the code keeps its best-accuracy checkpoint)."""

    epochs: int = Field(50, gt=0)
    batch_size: int = Field(50, gt=0)
    lr: float = Field(1e-4, gt=0)
    beta: float = Field(0.1, ge=0)
    samples: int = Field(1, gt=0)                # relaxed samples per image in a step (their log-probs averaged)
    ema_decay: float | None = Field(0.999, ge=0, lt=1)   # None: evaluate and export the raw weights
    # Rationale fidelity needs f itself on x ⊙ z: each epoch's evaluation loads ``source.checkpoint`` for it.
    rationale_fidelity: bool = True
    seed: int = 0
    # Fault injection for tests and drills: rank 0 raises once at the start of this epoch (never after a restore).
    fail_at_epoch: int | None = Field(None, ge=0)


class VibiTrainJob(LearnedJobConfig):
    """``jobs.train_explainer`` for VIBI (configs/vibi_*.yaml): the store rows hold the input itself (the
    ``input`` layer) and the black box's ``probabilities``; nothing else of f is read."""

    method: Literal["vibi"] = "vibi"
    source: StoreSource = Field(default_factory=lambda: StoreSource(
        checkpoint="outputs/digits_cnn", data=DataConfig(name="digits"), keep=[],
        splits={"train": "train", "val": "val", "test": "test"}))
    explainer: VibiConfig = Field(default_factory=VibiConfig)
    train: VibiTrainConfig = Field(default_factory=VibiTrainConfig)
    output: str = "outputs/vibi"

    def store_layers(self) -> list[str]:
        """VIBI masks the input and reads f's probabilities (a column of every store): the one layer is the input."""
        return self.source.layers or [INPUT_LAYER]


class VibiParams(BaseModel):
    """Per-request settings."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(None, ge=1, le=4096, description="chunks to keep; default: the k it was trained with")
