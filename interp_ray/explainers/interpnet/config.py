"""InterpNET's configuration: what the explainer is (its variants and sizes), the two training schedules, the evaluation
table and the training job. A leaf: no torch, so a job or the pipeline reads it without the networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from interp_ray.config import LearnedJobConfig, Section, StoreSource
from interp_ray.errors import UserError


@dataclass(frozen=True)
class VariantSpec:
    hidden: tuple[int, ...]                       # the classifier head's hidden sizes (head mode)
    parts: Literal["input", "output", "all"]      # what r(x) holds: h_0 only, p only, or everything
    doc: str


VARIANTS: dict[str, VariantSpec] = {
    "captioning": VariantSpec((), "input", "captioning baseline: r = h_0 (input features only)"),
    "interpnet_0": VariantSpec((), "output", "InterpNET_0: r = p (output only)"),
    "interpnet_1": VariantSpec((500,), "all", "InterpNET_1: r = [h_0, h_1, p], hidden [500]"),
    "interpnet_2": VariantSpec((500, 300), "all", "InterpNET_2: r = [h_0, h_1, h_2, p], hidden [500, 300]"),
    "interpnet_3": VariantSpec((500, 300, 200), "all", "InterpNET_3: r = [h_0, …, h_3, p], hidden [500, 300, 200]"),
}
PAPER_EMBED_DIM, PAPER_HIDDEN_DIM = 256, 512


class InterpNETConfig(Section):
    """What the explainer is (saved in its checkpoint). Sizes default to the paper's."""

    variant: Literal["captioning", "interpnet_0", "interpnet_1", "interpnet_2", "interpnet_3"] = "interpnet_2"
    classifier: Literal["head", "store"] = "head"
    # the activation column that is h_0; None: the classifier's penultimate vector (filled in by the job)
    feature_layer: str | None = None
    feature_pool: Literal["mean", "flatten"] = "mean"   # how an N×C×H×W column becomes N×D
    hidden: list[int] | None = None     # head mode: override the variant's hidden sizes
    layers: list[str] = Field(default_factory=list)     # store mode: the hidden-layer columns h_1..h_K
    embed_dim: int = Field(PAPER_EMBED_DIM, gt=0)
    hidden_dim: int = Field(PAPER_HIDDEN_DIM, gt=0)     # both LSTMs and the projection W₁
    dropout: float = Field(0.2, ge=0, lt=1)             # the paper keeps 0.8
    max_len: int = Field(76, gt=1)                      # tokens generated at most (incl. the end token)
    min_count: int = Field(1, ge=1)                     # vocabulary: keep words seen this often (paper: all)
    length_penalty: float = Field(0.7, ge=0)            # beam search α

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(h <= 0 for h in v):
            raise ValueError("hidden sizes must be positive")
        return v

    @model_validator(mode="after")
    def _store_layers(self):
        if self.classifier == "head" and self.layers:
            raise ValueError("layers is for classifier=store; in head mode the hidden layers are the head's")
        return self

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def head_hidden(self) -> list[int]:
        return list(self.spec.hidden if self.hidden is None else self.hidden)

    def columns(self) -> list[str]:
        """Activation columns this explainer reads."""
        if self.feature_layer is None:
            raise UserError("explainer.feature_layer is not set: name the activation column that is h_0 (the "
                            "training job fills in the classifier's penultimate layer)")
        cols = [self.feature_layer]
        if self.classifier == "store":
            cols += [c for c in self.layers if c not in cols] + ["probabilities"]
        return cols


class ClassifierTrainConfig(Section):
    """The paper's classifier schedule: Adam, best epoch by validation accuracy, lr halved after a bad epoch."""

    epochs: int = Field(30, gt=0)       # paper: 100
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class DecoderTrainConfig(Section):
    """The paper's explainer schedule: Adam, best epoch by validation loss, lr halved after a bad epoch."""

    epochs: int = Field(10, gt=0)       # paper: 100
    batch_size: int = Field(32, gt=0)
    lr: float = Field(5e-4, gt=0)
    halve_on_plateau: bool = True
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    # Fault injection for tests and drills: rank 0 raises once at the start of this epoch (never after a restore).
    fail_at_epoch: int | None = Field(None, ge=0)


class EvaluateSection(Section):
    """``jobs.evaluate``: the paper's table over variants (each trained by ``jobs.train_explainer`` when missing)."""

    variants: list[str] = Field(default_factory=lambda: ["captioning", "interpnet_0", "interpnet_1", "interpnet_2",
                                                         "interpnet_3"])
    output_dir: str = "outputs/interpnet_table"   # <output_dir>/<variant>/ checkpoints, table.md, results.json
    trainer: Literal["ray", "local"] = "ray"      # how missing explainers are trained
    retrain: bool = False                         # train even when <output_dir>/<variant> exists
    beam_width: int = Field(1, ge=1)              # 1 = greedy (the paper's evaluation)
    samples: int = Field(8, ge=0)                 # example sentences per variant in the report
    meteor: bool = True


class InterpNETTrainJob(LearnedJobConfig):
    """``jobs.train_explainer`` for InterpNET (configs/interpnet_*.yaml): the store rows (activations + sentences),
    the explainer, the classifier head's schedule (head mode) and the explainer network's."""

    method: Literal["interpnet"] = "interpnet"
    source: StoreSource = Field(default_factory=lambda: StoreSource(
        rows={"train": 3000, "val": 600, "test": 1000}))
    explainer: InterpNETConfig = Field(default_factory=InterpNETConfig)
    classifier_train: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)
    train: DecoderTrainConfig = Field(default_factory=DecoderTrainConfig)
    output: str = "outputs/interpnet"
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)

    def store_layers(self) -> list[str]:
        """The layers to extract: ``source.layers``, else the explainer's columns (``probabilities`` is a store
        column of its own)."""
        return self.source.layers or [c for c in self.explainer.columns() if c != "probabilities"]


class InterpNETParams(BaseModel):
    """Per-request decoding settings."""

    model_config = ConfigDict(extra="forbid")

    beam_width: int = Field(1, ge=1, le=32, description="1 = greedy decoding (the paper's evaluation)")
    max_len: int | None = Field(None, ge=1, le=500, description="tokens at most; default: the trained max_len")
