"""The explainer protocol, the explanation record and the registry every method plugs into.

Adding a method is one file: subclass ``Explainer``, decorate it with ``@register("name")``, and add the module to
``EXPLAINER_MODULES`` below. Serving (``/v1/explain/{name}``), the jobs and the conformance tests read the registry.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from interp_ray.registry import Registry

EXPLAINERS: Registry = Registry("explainer")
register = EXPLAINERS.register

# Modules that register explainers; imported on first use of the registry so import stays cheap.
EXPLAINER_MODULES: list[str] = [
    "interp_ray.explainers.feature_inversion",
    "interp_ray.explainers.baselines",
    "interp_ray.explainers.interpnet",
    "interp_ray.explainers.flint",
    "interp_ray.explainers.cnn_inte",
    "interp_ray.explainers.semantic",
]


@dataclass
class Explanation:
    """One input's explanation; a method fills the fields it produces and leaves the rest ``None``.

    label:       the class the explanation is about (the prediction, or the requested target)
    sentence:    natural-language explanation (InterpNET, Dong et al.)
    saliency:    H×W float map over the input, higher = more relevant (feature inversion, Grad-CAM …)
    attributes:  attribute name → relevance (FLINT)
    path:        the route through a meta-model (CNN-INTE), e.g. {"level1": 3, "level2": 7, "votes": {...}}
    neurons:     neuron index → label (Dong et al.)
    extra:       anything else a method reports (losses, probabilities …), JSON-safe
    """

    label: int
    label_name: str | None = None
    method: str | None = None
    sentence: str | None = None
    saliency: np.ndarray | None = None
    attributes: dict[str, float] | None = None
    path: dict[str, Any] | None = None
    neurons: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (numpy arrays become nested lists)."""
        return _json_safe(asdict(self))


def _json_safe(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Explainer(abc.ABC):
    """A method that explains a classifier's predictions.

    name:     registry key and HTTP route segment.
    needs:    what ``explain`` reads from a batch: "image" (N×C×H×W float32), "activations" (layer columns of the
              activation store), "model" (the classifier itself, given at construction or load).
    produces: which ``Explanation`` fields it fills.
    Params:   the per-request parameters (a pydantic model); the service validates requests against it.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"image"})
    produces: ClassVar[frozenset[str]] = frozenset()
    learned: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = NoParams

    def fit(self, data: Any, **kwargs: Any) -> "Explainer":
        """Learn from ``data`` (learned methods); a no-op for optimisation methods."""
        return self

    @abc.abstractmethod
    def explain(self, batch: dict[str, np.ndarray], params: BaseModel | None = None) -> list[Explanation]:
        """One ``Explanation`` per row of ``batch``; ``batch["target"]`` (optional, -1 = predicted) picks classes."""

    def save(self, path: str) -> str:
        raise NotImplementedError(f"{self.name} has no learned state to save")

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> "Explainer":
        raise NotImplementedError(f"{cls.name} has no learned state to load")

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        return {"name": cls.name, "needs": sorted(cls.needs), "produces": sorted(cls.produces),
                "learned": cls.learned, "params": cls.Params.model_json_schema(),
                "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""}


def load_explainer_modules() -> None:
    for module in EXPLAINER_MODULES:
        importlib.import_module(module)


def get_explainer(name: str) -> type[Explainer]:
    load_explainer_modules()
    return EXPLAINERS.get(name)


def explainer_names() -> list[str]:
    load_explainer_modules()
    return EXPLAINERS.names()


# ======================================================================================================================
# Learned explainers: the epoch trainer one Ray Train job drives (jobs/train_explainer.py)
#
# A learned explainer that learns from store rows also subclasses ``Trainable``. The job streams each Ray Train
# worker's shard of the rows (``ray.train.get_dataset_shard``) into ``run_epoch``; nothing holds the whole table.
# ======================================================================================================================

from typing import Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable  # noqa: E402  (this section's own)

Batch = Mapping[str, Any]   # one batch of rows: column name → N×… array (the store's columns, as Ray Data gives them)


@runtime_checkable
class EpochTrainer(Protocol):
    """One learned explainer's training, an epoch at a time — the same object in plain Python and on a worker.

    epochs:      how many epochs the whole run has (the job runs those left after its last checkpoint)
    run_epoch:   one pass over ``train`` (this worker's shard, in row batches), then an evaluation over ``val`` (every
                 validation row); returns the epoch's metrics (JSON-safe scalars; ``select`` names the one that
                 chooses the best epoch, lower is better)
    best_state:  the explainer's weights at its best epoch so far: what is exported
    state_dict / load_state_dict: everything a restarted worker needs to go on (weights, optimiser, lr, best)
    """

    epochs: int
    select: str
    best_state: dict[str, Any]

    def run_epoch(self, epoch: int, train: Iterable[Batch], val: Iterable[Batch]) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Trainable(abc.ABC):
    """What a learned explainer adds to ``Explainer`` to be trained by ``jobs/train_explainer.py`` from the store.

    TrainJob:   its training job's typed config (an ``interp_ray.config.LearnedJobConfig``: where the rows come
                from, how they stream, scaling, run, output, plus the method's own sections; its ``train`` section
                carries ``seed`` and the drill's ``fail_at_epoch``)
    """

    TrainJob: ClassVar[type[BaseModel]]

    @classmethod
    @abc.abstractmethod
    def from_rows(cls, job: BaseModel, rows: Callable[[], Iterable[Batch]], *, class_names: Sequence[str] | None
                  ) -> "Trainable":
        """The untrained explainer, fixed by streaming passes over the training rows on the driver (``rows()`` starts
        one): vocabulary, input widths, standardisation, topics — statistics of the rows, never the rows."""

    @abc.abstractmethod
    def train_columns(self) -> list[str]:
        """The row columns the trainer reads (store layers and kept columns)."""

    @abc.abstractmethod
    def trainer(self, job: BaseModel, *, device: Any = "cpu", wrap: Callable[[Any], Any] | None = None
                ) -> EpochTrainer:
        """The epoch trainer. ``wrap`` is applied to each module it trains (Ray Train's ``prepare_model``: DDP)."""

    @abc.abstractmethod
    def use_state(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        """Put a trainer's ``best_state`` (and the run's per-epoch ``history``) into this explainer, to be saved."""

    def finish(self, job: BaseModel, rows: Callable[[], Iterable[Batch]]) -> dict[str, Any]:
        """After training, on the driver, with the best state in place (e.g. label neurons); returns a report."""
        return {}
