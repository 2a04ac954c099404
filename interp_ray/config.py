"""Typed configs (pydantic), loaded from YAML and validated on creation.

Every section forbids unknown keys, so a typo fails with the field's dotted path instead of being silently ignored.
``load_config`` turns a missing file, malformed YAML or a failed validation into one ``UserError`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from interp_ray.errors import UserError

C = TypeVar("C", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Section):
    name: str = "digits"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from interp_ray.data import dataset_names

        if v not in dataset_names():
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(dataset_names())}")
        return v


class ModelConfig(Section):
    name: str = "digits_cnn"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from interp_ray.models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model {v!r}; valid: {', '.join(MODELS.names())}")
        return v


class OptimConfig(Section):
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    augment_shift: int = Field(0, ge=0)   # random translation (pixels) of each training image
    # Fault injection for tests and drills: rank 0 raises once at the start of this epoch (never after a restore).
    fail_at_epoch: int | None = Field(None, ge=0)


class ScalingSection(Section):
    num_workers: int = Field(1, gt=0)
    use_gpu: bool | Literal["auto"] = "auto"
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1})


class RunSection(Section):
    storage_path: str = "./runs"           # local dir or s3:// / gs://
    name: str | None = None                # reuse a name to resume that run (Ray Train restores it)
    max_failures: int = Field(2, ge=0)
    checkpoints_to_keep: int = Field(2, gt=0)
    # Write a checkpoint every k epochs (and always after the last). A checkpoint costs a state_dict copy, a
    # torch.save and Ray Train's upload to storage_path; on a short epoch that is a visible share of the time, while
    # a failure then repeats at most k - 1 epochs.
    checkpoint_every: int = Field(1, gt=0)

    def checkpoint_due(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` (0-based) of ``epochs`` ends with a checkpoint."""
        return (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 >= epochs


class ClassifierJobConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: OptimConfig = Field(default_factory=OptimConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    output: str = "outputs/digits_cnn"     # where the final classifier checkpoint is written


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=3", "data.options.n=100"]`` → nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"override {pair!r} must look like section.key=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"config file {p} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {p} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


def validate(cls: type[C], raw: dict[str, Any], *, source: str = "config") -> C:
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise UserError(f"{source}: {where}: {msg}{more}") from None


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    raw = read_yaml(path) if path else {}
    return validate(cls, deep_merge(raw, parse_overrides(overrides)), source=str(path or "config"))
