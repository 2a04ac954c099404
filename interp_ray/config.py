"""Typed configs (pydantic), loaded from YAML and validated on creation.

Every section forbids unknown keys, so a typo fails with the field's dotted path instead of being silently ignored.
``load_config`` turns a missing file, malformed YAML or a failed validation into one ``UserError`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from interp_ray.errors import UserError

C = TypeVar("C", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class NamedSpec(Section):
    """A name a registry must know (``check_name``: the name, or ValueError listing what is valid) and the options
    that build it."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        return cls.check_name(v)

    @classmethod
    def check_name(cls, v: str) -> str:
        return v


class DataConfig(NamedSpec):
    name: str = "digits"

    @classmethod
    def check_name(cls, v: str) -> str:
        from interp_ray.data import dataset_names

        if v not in dataset_names():
            raise ValueError(f"unknown dataset {v!r}; valid: {', '.join(dataset_names())}")
        return v


class ModelConfig(NamedSpec):
    name: str = "digits_cnn"

    @classmethod
    def check_name(cls, v: str) -> str:
        from interp_ray.models import check_spec

        try:  # a model spec: a registered name, torchvision:NAME, timm:NAME or module:callable
            return check_spec(v)
        except UserError as e:
            raise ValueError(str(e)) from None


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
    # Ray Train's own messages on the terminal at this level and above (its per-report INFO lines are noise there);
    # every one of them stays in the run's log files under Ray's session directory.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"

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


LayerDtype = Literal["float32", "float16", "bfloat16"]
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(value: Any) -> Any:
    """``134217728``, ``"128MiB"``, ``"1.5 GB"`` → bytes (int); anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        import re

        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(f"{value!r} is not a size; write bytes or e.g. 128MiB, 64MB, 1GiB")
        return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()])
    return value


class LayerStore(Section):
    """How one layer is kept in an activation store (interp_ray.activations.keep_layer applies it): channels first,
    then the spatial reduction (over the last two axes of a C×H×W map), then the cast to ``dtype``.

    ``reduce``: ``none`` (the full map), ``mean`` / ``max`` over H×W (→ C), ``avgpool`` (adaptive average pooling to
    ``pool_size``×``pool_size``, → C×k×k). ``channels``: indices into the layer's first axis (its channels, or the
    features of a flat layer), kept in the order given. ``dtype`` None: the store's ``dtype``."""

    dtype: LayerDtype | None = None
    reduce: Literal["none", "mean", "max", "avgpool"] = "none"
    pool_size: int | None = Field(None, gt=0)
    channels: list[int] | None = Field(None, min_length=1)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if min(v) < 0:
                raise ValueError(f"channel {min(v)} is negative; channels are indices 0..C-1")
            if len(set(v)) != len(v):
                raise ValueError("channels must not repeat")
        return v

    @model_validator(mode="after")
    def _pool_size(self) -> "LayerStore":
        if (self.reduce == "avgpool") != (self.pool_size is not None):
            raise ValueError("pool_size (k of the k×k pooling) goes with reduce=avgpool, and only with it")
        return self


def check_layer_names(names: Any, layers: list[str]) -> None:
    """A ``store.layers`` entry must name an extracted layer: a typo would otherwise keep the full map silently."""
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise UserError(f"store.layers.{unknown[0]}: not an extracted layer; extracted: {', '.join(layers)}")


class StoreSection(Section):
    root: str = "outputs/activations"      # stores go to <root>/<model name>/<key>/ ; local dir or s3:// / gs://
    path: str | None = None                # an explicit store directory instead (one split only)
    # A part holds at most shard_rows rows and at most part_bytes bytes of rows as extracted (interp_ray.store's
    # rows_per_part): the writer buffers one part per shard in flight, so part_bytes bounds its memory whatever a row
    # weighs (a ResNet-50 layer3 row at 224 px is 784 KiB in float32). A part is the unit of resumption.
    shard_rows: int = Field(2048, gt=0)    # interp_ray.store.DEFAULT_SHARD_ROWS
    part_bytes: int = Field(128 * 2**20, gt=0)  # bytes or a size such as 128MiB (interp_ray.store.DEFAULT_PART_BYTES)
    compression: Literal["snappy", "zstd", "lz4", "none"] = "snappy"  # snappy: cheapest CPU per MB on small boxes
    dtype: LayerDtype = "float32"          # every layer's kept dtype, unless its entry in ``layers`` says otherwise
    layers: dict[str, LayerStore] = Field(default_factory=dict)  # per extracted layer: dtype, reduce, channels

    @field_validator("part_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_bytes(v)

    def layer_specs(self, layers: list[str]) -> dict[str, LayerStore]:
        """Each of ``layers`` (the extracted ones) with its resolved spec (``dtype`` filled in from the store's); an
        entry for a layer not extracted is a ``UserError`` naming it."""
        check_layer_names(self.layers, layers)
        out = {}
        for name in layers:
            spec = self.layers.get(name, LayerStore())
            out[name] = spec.model_copy(update={"dtype": spec.dtype or self.dtype})
        return out


class ComputeSection(Section):
    engine: Literal["ray", "local"] = "ray"
    batch_size: int = Field(256, gt=0)     # rows per model call
    actors: int = Field(1, gt=0)           # extractor actor pool size
    num_gpus: float | Literal["auto"] = "auto"  # per actor; auto: 1 when the cluster has GPUs, else 0
    num_cpus: float = Field(1.0, gt=0)     # per extractor actor
    torch_threads: int | None = Field(None, gt=0)  # default: what Ray gives an actor (its CPU count)
    device: str | None = None              # None: CUDA when the actor sees one, else CPU
    # Mixed-precision forward (torch.autocast) in the extractor: a GPU's tensor-core rate. Not part of the store key
    # (the kept dtype is): give an autocast run its own store.root if its rows must not mix with float32 ones.
    autocast: Literal["float16", "bfloat16"] | None = None
    load_num_cpus: float = Field(0.5, gt=0)   # per loader task (image decoding / scene generation)
    write_num_cpus: float = Field(0.25, gt=0)  # the single writer actor (Parquet encoding)
    wait_for_resources: bool = False       # autoscaling clusters: let the pipeline wait for nodes to join


class StoreSource(Section):
    """Where a learned explainer's rows come from: the activation store that extracting ``checkpoint`` over ``data``
    gives (``jobs.train_explainer`` runs the extraction job first; it computes only the shards that are missing).

    ``splits`` maps a role (train, val, test) to the dataset's split; ``rows`` caps a role's rows (the dataset's ``n``
    option, so only those rows are extracted); ``layers`` default to the explainer's own columns; ``keep`` names the
    dataset columns stored beside the activations (the reference sentences the explainer learns from)."""

    checkpoint: str = "outputs/scenes_cnn"
    data: DataConfig = Field(default_factory=lambda: DataConfig(name="scenes"))
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    rows: dict[str, int | None] = Field(default_factory=dict)
    layers: list[str] | None = None
    keep: list[str] = Field(default_factory=lambda: ["sentences"])
    store: StoreSection = Field(default_factory=StoreSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)


class StreamSection(Section):
    """How a Ray Train worker reads its shard of the rows."""

    batch_rows: int = Field(256, gt=0)           # rows per batch from the shard (the trainer cuts its own steps)
    shuffle_buffer: int = Field(2048, ge=0)      # rows in each worker's local shuffle buffer; 0 = store order
    # tests and drills: each rank reports the store row indices it read in each epoch (``indices_per_rank``)
    record_indices: bool = False
    # benchmarks: end each epoch after this many batches of the shard (the same work at any store size)
    max_batches: int | None = Field(None, gt=0)
    # the object-store memory Ray Data's read pipeline may fill ahead of the workers (None: Ray's default budget)
    read_ahead_mib: int | None = Field(None, gt=0)
    # Every worker scores every val row after each epoch. True: it reads them once and keeps them (val is the small
    # split; re-reading it through Ray Data cost a few seconds of every epoch here); False: streamed each time.
    keep_val: bool = True


class LearnedJobConfig(Section):
    """The sections every ``jobs.train_explainer`` config has; each learned method's ``TrainJob`` adds its own."""

    method: str
    source: StoreSource = Field(default_factory=StoreSource)
    stream: StreamSection = Field(default_factory=StreamSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    output: str


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
