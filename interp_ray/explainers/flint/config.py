"""FLINT's configuration: the loss-weight schedules, the interpreter's section, the optimiser, the pictures (AM+PI)
and the whole job (``jobs/train_flint.py``, ``train_local``). Pydantic sections only: no torch and nothing else of
this package, so every other FLINT module reads it and it reads none of them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from interp_ray.config import (ComputeSection, DataConfig, ModelConfig, OptimConfig, RunSection, ScalingSection,
                               Section, StoreSection, StreamSection)
from interp_ray.errors import UserError


# ---------------------------------------------------------------------------------------------------------------
# Loss-weight schedules (the losses themselves: ``losses``)
# ---------------------------------------------------------------------------------------------------------------

TERMS: tuple[str, ...] = ("pred", "rec", "fid", "l1", "ent")   # the loss terms (``losses``)

Step = tuple[int, float]  # (first epoch, counted from 1; weight from that epoch on)


class ScheduleSection(Section):
    """Loss weights by epoch. Each term is a list of ``[first_epoch, weight]`` steps (epochs counted from 1, as the
    authors' loop counts them); the weight at epoch e is that of the last step with first_epoch ≤ e, 0 before the
    first step. ``pred`` is λ_acc, ``rec`` γ, ``fid`` β, ``l1`` δη, ``ent`` δ."""

    pred: list[Step] = Field(default_factory=lambda: [(1, 1.0)])
    rec: list[Step] = Field(default_factory=list)
    fid: list[Step] = Field(default_factory=list)
    l1: list[Step] = Field(default_factory=list)
    ent: list[Step] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_steps(self) -> "ScheduleSection":
        for term in TERMS:
            steps = getattr(self, term)
            firsts = [s[0] for s in steps]
            if firsts != sorted(firsts) or len(set(firsts)) != len(firsts) or any(e < 1 for e in firsts):
                raise ValueError(f"schedule {term}: first epochs must be >= 1, increasing and distinct; got {firsts}")
            if any(w < 0 for _, w in steps):
                raise ValueError(f"schedule {term}: weights must be >= 0")
        return self

    def first_epoch(self, term: str) -> int | None:
        """The first epoch (from 1) at which ``term`` weighs more than 0; None if it never does."""
        return next((first for first, w in getattr(self, term) if w > 0), None)

    def weights(self, epoch: int) -> dict[str, float]:
        """The weight of every term at ``epoch`` (counted from 1)."""
        out = {}
        for term in TERMS:
            w = 0.0
            for first, value in getattr(self, term):
                if epoch >= first:
                    w = float(value)
            out[term] = w
        return out


# From ``flint.py``'s training loop: lmbd_rec = γ·[epoch > 0], lmbd_expl = β·[epoch > 2], lmbd_spa, lmbd_ent, with
# ``epoch`` running 1..N. CUB's weights were not released; "cub" is the CIFAR-10 schedule (PAPERS.md [R]).
SCHEDULES: dict[str, dict[str, list[Step]]] = {
    "mnist": {"pred": [(1, 1.0)], "rec": [(1, 0.8)], "fid": [(3, 0.5)], "l1": [(3, 0.1)], "ent": [(5, 0.2)]},
    "quickdraw": {"pred": [(1, 1.0)], "rec": [(1, 5.0)], "fid": [(3, 0.1)], "l1": [(2, 0.02), (3, 0.30)],
                  "ent": [(4, 0.1)]},
    "cifar10": {"pred": [(1, 1.0)], "rec": [(1, 2.0)], "fid": [(3, 0.6)], "l1": [(2, 0.001), (3, 0.15)],
                "ent": [(4, 0.2)]},
    "cub": {"pred": [(1, 1.0)], "rec": [(1, 2.0)], "fid": [(3, 0.6)], "l1": [(2, 0.001), (3, 0.15)],
            "ent": [(4, 0.2)]},
}
ScheduleName = Literal["mnist", "quickdraw", "cifar10", "cub"]


def schedule_preset(name: str) -> ScheduleSection:
    if name not in SCHEDULES:
        raise UserError(f"unknown FLINT schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return ScheduleSection.model_validate(SCHEDULES[name])


# ---------------------------------------------------------------------------------------------------------------
# Interpretation and pictures
# ---------------------------------------------------------------------------------------------------------------

TAUS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)  # the code's ``mults``


class AMSection(Section):
    """Activation maximisation with partial initialisation (``optimize_inp``), MNIST/QuickDraw constants."""

    kappa: float = Field(0.3, ge=0)        # initialisation κ·x₀
    C: float = 2.0
    lambda_tv: float = 6.0
    lambda_bound: float = 10.0
    lambda_l1: float = 0.0
    bounds: tuple[float, float] = (0.0, 1.0)
    lr: float = Field(0.05, gt=0)
    lr_decay: float = Field(0.5, gt=0, le=1)
    rounds: int = Field(12, gt=0)
    n_iter: int = Field(50, gt=0)


# ---------------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------------

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
    """Defaults of the MNIST run of the code: Adam (AdamW with weight decay 0), lr 1e-4 constant, batch 16, 12
    epochs."""

    epochs: int = Field(12, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["cosine", "constant"] = "constant"
    lr_steps: list[tuple[int, float]] = Field(default_factory=list)  # [[epoch (from 1), lr]]: CIFAR 4e-5 at 19


class PicturesSection(Section):
    enabled: bool = False                  # write the PNGs (global pairs, a local sheet) beside the checkpoint
    # Grow the AM+PI tiles (per attribute, per relevant pair) once after training and keep them in the checkpoint:
    # a served or drawn explanation is composed from them. False: each process grows an attribute's on first use.
    stored: bool = True
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

    def check_fidelity_trained(self, where: str = "") -> None:
        """Refuse a run whose fidelity term (L_of: g matching f, the interpreter's only link to f) never turns on within
        ``train.epochs``: every preset starts it at epoch 3, so a shorter run would train g on reconstruction alone and
        report a chance-level fidelity as a result. BASE runs have no interpreter terms by design."""
        if self.flint.mode == "base":
            return
        start = self.flint.resolved_schedule().first_epoch("fid")
        if start is None or start > self.train.epochs:
            name = self.flint.schedule if isinstance(self.flint.schedule, str) else "given"
            when = f"turns on at epoch {start}" if start else "never turns on"
            raise UserError(f"{where}flint.schedule: the {name} schedule's fidelity term (fid) {when}, but "
                            f"train.epochs is {self.train.epochs}: g would never learn to match f; set train.epochs >= "
                            f"{start or 1} or a schedule whose fid starts earlier")
