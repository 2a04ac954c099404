"""FLINT's configuration: the interpreter's section, the optimiser, the pictures and the whole job
(``jobs/train_flint.py``, ``train_local``). Kept apart from the explainer so the job and the training driver read it
without importing the explainer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from interp_ray.config import (ComputeSection, DataConfig, ModelConfig, OptimConfig, RunSection, ScalingSection, Section,
                               StoreSection, StreamSection)
from interp_ray.explainers.flint.am import AMSection
from interp_ray.explainers.flint.interpretation import TAUS
from interp_ray.explainers.flint.losses import SCHEDULES, ScheduleName, ScheduleSection, schedule_preset


class FlintSection(Section):
    """The interpreter's architecture, losses and interpretation settings; ``None`` = the predictor's default."""

    mode: Literal["joint", "posthoc", "base"] = "joint"  # base: f alone, same loop, every interpretation weight 0
    predictor_checkpoint: str | None = None              # post-hoc: the frozen classifier (interp-ray checkpoint)
    layers: list[str] | None = None
    n_attributes: int = Field(25, gt=0)
    psi_channels: int = Field(64, gt=0)
    psi_activation: Literal["leaky_relu", "relu"] | None = None
    decoder: Literal["convt", "upsample"] | None = None
    decoder_channels: list[int] | None = None
    decoder_output: Literal["relu", "sigmoid", "none"] = "relu"
    recon_loss: Literal["mse", "l1"] = "mse"
    interpreter_dropout: float = Field(0.01, ge=0, lt=1)
    schedule: ScheduleName | ScheduleSection = "mnist"
    tau: float = Field(2.0, gt=0)                        # threshold 1/τ on relevance
    taus: list[float] = Field(default_factory=lambda: list(TAUS))
    relevance_samples: int = Field(1020, gt=0)           # training rows for global relevance (the code: 51×20)
    n_mas: int = Field(3, gt=0)                          # maximum-activating samples kept per attribute

    @field_validator("schedule", mode="before")
    @classmethod
    def _known_schedule(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in SCHEDULES:
            raise ValueError(f"unknown FLINT schedule {v!r}; valid: {', '.join(SCHEDULES)} (or a mapping of steps)")
        return v

    @model_validator(mode="after")
    def _posthoc_needs_predictor(self) -> "FlintSection":
        if self.mode == "posthoc" and not self.predictor_checkpoint:
            raise ValueError("mode 'posthoc' needs predictor_checkpoint (a trained classifier)")
        return self

    def resolved_schedule(self) -> ScheduleSection:
        base = schedule_preset(self.schedule) if isinstance(self.schedule, str) else self.schedule
        data = base.model_dump()
        if self.mode == "posthoc":
            data["pred"] = []
        elif self.mode == "base":
            data = {"pred": data["pred"]}
        return ScheduleSection.model_validate(data)


class FlintOptimConfig(OptimConfig):
    """Defaults of the MNIST run of the code: Adam (AdamW with weight decay 0), lr 1e-4 constant, batch 16, 12 epochs."""

    epochs: int = Field(12, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["cosine", "constant"] = "constant"
    lr_steps: list[tuple[int, float]] = Field(default_factory=list)  # [[epoch (from 1), lr]]: CIFAR 4e-5 at 19


class PicturesSection(Section):
    enabled: bool = False
    dir: str | None = None                 # default: <output>/pictures
    max_pairs: int = Field(40, gt=0)       # at most this many (class, attribute) pairs get a picture
    am: AMSection = Field(default_factory=AMSection)


class FlintJobConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)  # the predictor (joint/base); post-hoc reads the checkpoint
    flint: FlintSection = Field(default_factory=FlintSection)
    train: FlintOptimConfig = Field(default_factory=FlintOptimConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    pictures: PicturesSection = Field(default_factory=PicturesSection)
    materialize_rows: int = Field(20000, ge=0)  # datasets up to this many rows are generated once, kept in memory
    # Post hoc, f is frozen: its taps, its probabilities and the input come from the activation store (extracted
    # first, once, by jobs.extract_activations: ``store``, ``compute``) and stream to the Ray Train workers
    # (``stream``: the shuffle buffer; steps are ``train.batch_size`` rows). Joint and BASE runs train f on images.
    store: StoreSection = Field(default_factory=StoreSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    stream: StreamSection = Field(default_factory=StreamSection)
    output: str = "outputs/flint_digits"
