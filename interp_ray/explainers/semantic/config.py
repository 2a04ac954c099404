"""Dong et al.'s captioner's configuration: what the captioner is, its training schedule, how neurons are labelled,
the training job and the per-request parameters. A leaf: no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from interp_ray.config import LearnedJobConfig, Section, StoreSource
from interp_ray.errors import UserError
from interp_ray.topics import TopicConfig

PAPER_ATTENTION_PENALTY = 0.70602


class SemanticConfig(Section):
    """What the captioner is (saved in its checkpoint). Paper sizes in comments; defaults are scaled for scenes."""

    enc_hidden: int = Field(64, gt=0)            # paper: 256 per direction
    interp_dim: int = Field(64, gt=0)            # neurons of the interpretable layer a (paper: 1536 = |v̄|)
    word_dim: int = Field(64, gt=0)              # paper: 468
    dec_hidden: int = Field(128, gt=0)           # paper: 3518
    att_dim: int = Field(64, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    selector: bool = True
    decoder_reads: Literal["v", "a"] = "a"       # see the module docstring
    interp_weight: float = Field(0.1, ge=0)      # λ
    attention_penalty: float = Field(PAPER_ATTENTION_PENALTY, ge=0)  # γ, the doubly-stochastic penalty
    max_len: int = Field(30, gt=1)               # tokens generated at most (incl. <end>)
    min_count: int = Field(1, ge=1)


class SemanticTrainConfig(Section):
    """Adam (the paper: Adadelta), gradient-norm clip 10 and weight decay 1e-4 as the paper; best epoch by val NLL."""

    epochs: int = Field(10, gt=0)                # paper: 30
    batch_size: int = Field(64, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    seed: int = 0
    # Fault injection for tests and drills: rank 0 raises once at the start of this epoch (never after a restore).
    fail_at_epoch: int | None = Field(None, ge=0)


class LabelConfig(Section):
    """Prediction-difference labelling (module docstring)."""

    top_n: int = Field(20, gt=0)                 # |V_d|
    form: Literal["diff", "log"] = "diff"
    replace: Literal["zero", "mean"] = "zero"
    level: Literal["word", "topic"] = "word"
    margin: float = Field(0.2, ge=0)             # relative margin of a confident label
    top_words: int = Field(4, ge=1)              # also keep each neuron's top-m words with a positive score
    concepts: list[str] | None = None            # word level: only these words can be labels (None: all words)
    eps: float = Field(1e-3, gt=0)               # log form: ŝ is clamped to at least eps

    @field_validator("concepts")
    @classmethod
    def _words_not_a_dataset(cls, v):
        # The old shorthand [attributes] made the explainer import the scenes dataset for its word list; an explainer
        # never imports a dataset, so the words are written out (configs/semantic_scenes.yaml lists the scenes').
        if v == ["attributes"]:
            raise ValueError("list the concept words themselves (configs/semantic_scenes.yaml lists the scenes' 13 "
                             "attribute words); the shorthand [attributes] is gone")
        return v


class SemanticTrainJob(LearnedJobConfig):
    """``jobs.train_explainer`` for the Dong et al. captioner (configs/semantic_*.yaml). The rows are clips: the
    frame CNN's ``source.layers[0]`` on every frame, one store row per clip (``data.name: scene_clips``), with the
    clips' reference sentences (and the scenes' attributes, for the evaluation) kept beside them."""

    method: Literal["semantic"] = "semantic"
    source: StoreSource = Field(default_factory=lambda: StoreSource(
        data={"name": "scene_clips", "options": {"frames": 8}}, keep=["sentences", "attributes"],
        rows={"train": 1200, "val": 240, "test": 240}))
    topics: TopicConfig = Field(default_factory=TopicConfig)
    explainer: SemanticConfig = Field(default_factory=SemanticConfig)
    train: SemanticTrainConfig = Field(default_factory=SemanticTrainConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    output: str = "outputs/semantic"

    @property
    def frame_column(self) -> str:
        """The frame features' column: ``source.layers[0]``, which the training job fills in with the frame CNN's
        penultimate vector when the config names none (``Semantic.for_classifier``)."""
        if not self.source.layers:
            raise UserError("source.layers is not set: name the frame CNN's layer whose features are captioned (the "
                            "training job fills in the classifier's penultimate layer)")
        return self.source.layers[0]


class SemanticParams(BaseModel):
    """Per-request settings: decoding, how many neurons to report, and optional edits (revision)."""

    model_config = ConfigDict(extra="forbid")

    max_len: int | None = Field(None, ge=1, le=200)
    top_neurons: int = Field(5, ge=0, le=100)
    suppress: list[str] = Field(default_factory=list, description="neuron ids or label words to set to 0")
    boost: list[str] = Field(default_factory=list, description="neuron ids or label words to set to their "
                                                               "typical top activation")
    match: Literal["label", "words"] = Field("label", description="a word selects neurons by their label or by "
                                                                  "their top-m words")
