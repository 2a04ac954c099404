"""The training side of a learned explainer: ``Trainable`` (what it adds to ``Explainer``) and ``EpochTrainer`` (the
object a Ray Train worker drives), re-exported by ``interp_ray.explainers.base``.

Kept apart from the explainer protocol because it reads nothing of it: the protocol's module stays readable (issue
#34), and the training job's contract is one file.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel

# ======================================================================================================================
# Learned explainers: the epoch trainer one Ray Train job drives (jobs/train_explainer.py)
#
# A learned explainer that learns from store rows also subclasses ``Trainable``. The job streams each Ray Train
# worker's shard of the rows (``ray.train.get_dataset_shard``) into ``run_epoch``; nothing holds the whole table.
# ======================================================================================================================

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
    trains_on:  what its training rows must carry besides activations and labels: "captions" (reference sentences,
                the ``sentences`` column of the dataset, kept in the store). The training job checks the dataset
                for it before any work, and names the fix in one line when it is missing.
    """

    TrainJob: ClassVar[type[BaseModel]]
    trains_on: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    @abc.abstractmethod
    def from_rows(cls, job: BaseModel, rows: Callable[[], Iterable[Batch]], *, class_names: Sequence[str] | None,
                  store: Mapping[str, Any] | None = None) -> "Trainable":
        """The untrained explainer, fixed by streaming passes over the training rows on the driver (``rows()`` starts
        one): vocabulary, input widths, standardisation, topics — statistics of the rows, never the rows. ``store``:
        the training store's ``describe()`` (its dataset's identity, e.g. ``image_shape`` T×C×H×W for clips, and the
        per-row layer shapes), for a method whose rows mean different things for images and clips."""

    @classmethod
    def for_classifier(cls, job: BaseModel, classifier: Any) -> BaseModel:
        """``job`` with the classifier layers it reads settled for ``classifier`` (the ``source.checkpoint``'s
        ``LoadedClassifier``), before any extraction or Ray start: the ones the config names, checked to exist, and
        the ones it leaves open taken from the classifier's roles (``role_layers``) the method's own way. The job
        then also checks ``source.layers`` exist. By default nothing is left open (the method reads the input)."""
        return job

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
