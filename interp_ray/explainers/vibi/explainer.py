"""VIBI (Bang et al., AAAI 2021, "Explaining a black-box using Deep Variational Information Bottleneck Approach"):
a learned explainer that picks the k chunks of an image that best let a small approximator reproduce the black box
f's class, trained by the variational information bottleneck (networks.py, trainer.py). FLINT's fidelity baseline
(PAPERS.md §3, Table 1).

It learns from the activation store: each row's input (the ``input`` layer, exactly what f saw) and f's
``probabilities``; f's class is their argmax. Nothing else of f is read for training; f itself runs only to score
rationales (f(x ⊙ z)).

An explanation is about f's predicted class (VIBI selects chunks for x, not for a class; a target is refused):

    saliency   H×W: each pixel's chunk score p(chunk | x); the k highest chunks are the rationale
    extra      chunks (the k kept, best first, row-major over the chunk grid), k, chunk_size,
               approximator_class / approximator_probability / approximator_agrees (q(· | x ⊙ z) against f(x)),
               rationale_class / rationale_agrees (f(x ⊙ z) against f(x), the masked chunks set to 0)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers.base import Batch, EpochTrainer, Explainer, Explanation, Trainable, register
from interp_ray.explainers.vibi.config import METHOD, VibiConfig, VibiParams, VibiTrainConfig, VibiTrainJob
from interp_ray.explainers.vibi.networks import VibiNet, chunk_mask
from interp_ray.explainers.vibi.trainer import VibiTrainer
from interp_ray.models.base import INPUT_LAYER

KIND = "explainer"
ROWS_PER_BATCH = 256


def check_shape(shape: Sequence[int], cfg: VibiConfig) -> tuple[int, int, int]:
    """The C×H×W input VIBI can chunk: sides divisible by the chunk size, at least k chunks, at least 4×4 pixels
    (the approximator pools twice)."""
    if len(shape) != 3:
        raise UserError(f"VIBI explains images (C×H×W inputs); the '{INPUT_LAYER}' column has per-row shape "
                        f"{tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    if h % cfg.chunk_size or w % cfg.chunk_size:
        raise UserError(f"explainer.chunk_size: {cfg.chunk_size} does not divide the {h}×{w} input; pick a divisor")
    chunks = (h // cfg.chunk_size) * (w // cfg.chunk_size)
    if chunks < cfg.k:
        raise UserError(f"explainer.k: {cfg.k} chunks asked of a grid of {chunks}")
    if h < 4 or w < 4:
        raise UserError(f"VIBI's approximator needs inputs of at least 4×4 pixels; got {h}×{w}")
    return c, h, w


@register(METHOD)
class VIBI(Explainer, Trainable):
    """VIBI (Bang et al. 2021): the k image chunks that let an approximator reproduce the black box's class."""

    name = METHOD
    needs = frozenset({"image", "activations", "model"})
    produces = frozenset({"saliency"})
    learned = True
    Params = VibiParams
    TrainJob = VibiTrainJob

    def __init__(self, config: VibiConfig | Mapping[str, Any] | None = None, *,
                 class_names: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 model: nn.Module | None = None):
        from interp_ray.config import validate

        self.config = config if isinstance(config, VibiConfig) else \
            validate(VibiConfig, dict(config or {}), source="vibi config")
        self.class_names = list(class_names) if class_names is not None else None
        self.device = torch.device(device)
        self.model = model                     # the black box f: scores rationales, f(x ⊙ z)
        self.net: VibiNet | None = None
        self.input_shape: tuple[int, int, int] | None = None
        self.num_classes: int | None = None
        self.history: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    # -- set-up ----------------------------------------------------------------------------------------------

    def build(self, input_shape: Sequence[int], num_classes: int) -> "VIBI":
        """The untrained networks for inputs of ``input_shape`` and ``num_classes`` classes, from fixed seeds (the
        caller's random state untouched): the same data and config always start from the same weights."""
        self.input_shape = check_shape(input_shape, self.config)
        self.num_classes = int(num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = VibiNet(self.input_shape, self.num_classes, self.config)
        self.net.to(self.device).eval()
        return self

    def _ready(self) -> VibiNet:
        if self.net is None:
            raise UserError("this VIBI explainer is not trained: call fit() or load a checkpoint")
        return self.net

    def layers(self) -> list[str]:
        """The input itself: the extractor that gives it also gives f's probabilities, the class explained."""
        return [INPUT_LAYER]

    # -- the training protocol (interp_ray.explainers.base.Trainable; jobs/train_explainer.py) ----------------

    @classmethod
    def from_rows(cls, job: VibiTrainJob, rows: Callable[[], Iterable[Batch]], *,
                  class_names: Sequence[str] | None = None, store: Mapping[str, Any] | None = None
                  ) -> "VIBI":
        """The input shape and the number of classes, from the first batch of the training rows."""
        first = next(iter(rows()), None)
        if first is None or not len(first[INPUT_LAYER]):
            raise UserError("no training rows: the store is empty")
        return cls(job.explainer, class_names=class_names).build(np.asarray(first[INPUT_LAYER]).shape[1:],
                                                                 np.asarray(first["probabilities"]).shape[1])

    def train_columns(self) -> list[str]:
        return [INPUT_LAYER, "probabilities"]

    def trainer(self, job: VibiTrainJob, *, device: Any = "cpu",
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> EpochTrainer:
        black_box = None
        if job.train.rationale_fidelity:
            from interp_ray.checkpoint import load_classifier

            black_box = load_classifier(job.source.checkpoint, device=device).model
        return self.make_trainer(job.train, device=device, wrap=wrap, black_box=black_box)

    def make_trainer(self, settings: VibiTrainConfig, *, device: Any = "cpu",
                     wrap: Callable[[nn.Module], nn.Module] | None = None,
                     black_box: nn.Module | None = None) -> VibiTrainer:
        return VibiTrainer(self._ready(), settings, device=device, wrap=wrap, black_box=black_box)

    def use_state(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        self._ready().load_state_dict(state)
        self.net.to(self.device).eval()
        self.history = [dict(h) for h in history]

    def finish(self, job: VibiTrainJob, rows: Callable[[], Iterable[Batch]]) -> dict[str, Any]:
        """The kept epoch's validation fidelities (the run's report line)."""
        kept = self.history[-1].get("best_epoch") if self.history else None
        best = next((h for h in self.history if h.get("epoch") == kept), {})
        return {k: round(float(best[k]), 4) for k in ("val_approximator_fidelity", "val_rationale_fidelity")
                if k in best}

    def fit(self, train: Iterable[Batch] | Batch, val: Iterable[Batch] | Batch,
            settings: VibiTrainConfig | None = None, *, black_box: nn.Module | None = None) -> "VIBI":
        """Train in this process with the trainer a Ray Train worker runs, over store-like batches (dicts with
        ``input`` and ``probabilities``, or one such dict); keeps the best epoch."""
        settings = settings or VibiTrainConfig()
        train_b, val_b = as_batches(train), as_batches(val)
        if self.net is None:
            self.build(np.asarray(train_b[0][INPUT_LAYER]).shape[1:], np.asarray(train_b[0]["probabilities"]).shape[1])
        trainer = self.make_trainer(settings, device=self.device, black_box=black_box)
        history = [trainer.run_epoch(epoch, train_b, val_b) for epoch in range(trainer.epochs)]
        self.use_state(trainer.best_state, history)
        return self

    # -- explaining ----------------------------------------------------------------------------------------

    def batch_from(self, images: np.ndarray, targets: np.ndarray,
                   activations: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        batch = super().batch_from(images, targets, activations)
        batch.pop(INPUT_LAYER, None)   # the same pixels as "image"
        return batch

    @torch.no_grad()
    def rationale(self, x: np.ndarray | torch.Tensor, k: int | None = None) -> dict[str, Any]:
        """For inputs x (N×C×H×W): log p over the chunks, the top-k chunk mask z (``k`` chunks: the trained k by
        default) and the approximator's log q on x ⊙ z."""
        net = self._ready()
        x = torch.as_tensor(np.asarray(x, dtype=np.float32)).to(self.device)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise UserError(f"input has shape {tuple(x.shape)}; this VIBI explainer was trained on "
                            f"N×{'×'.join(map(str, self.input_shape))} inputs")
        k = k or self.config.k
        if k > net.num_chunks:
            raise UserError(f"k: {k} chunks asked of a grid of {net.num_chunks}")
        log_q, log_p, z = net.eval()(x, k=k)
        return {"x": x, "k": k, "log_p": log_p, "z": z, "log_q": log_q}

    @torch.no_grad()
    def rationale_classes(self, x: torch.Tensor, z: torch.Tensor) -> np.ndarray:
        """argmax f(x ⊙ z): f on the input with every chunk outside the rationale set to 0."""
        if self.model is None:
            raise UserError("scoring a rationale runs the black box: build VIBI around the classifier")
        return self.model(self._ready().masked(x, z)).argmax(1).cpu().numpy()

    def explain(self, batch: Mapping[str, Any], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        net = self._ready()
        image = batch.get("image", batch.get(INPUT_LAYER))
        if image is None:
            raise UserError(f"VIBI reads the images ('image' or '{INPUT_LAYER}') and f's 'probabilities'")
        if "probabilities" not in batch:
            raise UserError("VIBI explains f's prediction: the batch needs f's 'probabilities' (the extractor's)")
        out = self.rationale(image, p.k)
        f_class = np.asarray(batch["probabilities"]).argmax(1)
        q = out["log_q"].exp().cpu().numpy()
        scores = chunk_mask(out["log_p"].exp(), net.grid, self.config.chunk_size).cpu().numpy()
        chosen = out["log_p"].topk(out["k"], dim=1).indices.cpu().numpy()
        rationale = self.rationale_classes(out["x"], out["z"]) if self.model is not None else None
        explanations = []
        for i, c in enumerate(f_class.tolist()):
            a = int(q[i].argmax())
            extra = {"chunks": [int(j) for j in chosen[i]], "k": len(chosen[i]),
                     "chunk_size": self.config.chunk_size, "approximator_class": a,
                     "approximator_probability": float(q[i, a]), "approximator_agrees": a == c}
            if rationale is not None:
                extra.update({"rationale_class": int(rationale[i]), "rationale_agrees": int(rationale[i]) == c})
            explanations.append(Explanation(
                label=int(c), label_name=self.class_names[c] if self.class_names else None, method=self.name,
                saliency=scores[i].astype(np.float32), extra=extra))
        return explanations

    # -- checkpoints -----------------------------------------------------------------------------------------

    def checkpoint_config(self) -> dict[str, Any]:
        return {"explainer": METHOD, "vibi": self.config.model_dump(), "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "class_names": self.class_names, "history": self.history,
                "info": self.info}

    @classmethod
    def specimen(cls, path, classifier) -> str:
        """A small VIBI (1 epoch) over the classifier, from the rows the activation store holds for it (the ``input``
        layer and the classifier's probabilities) for the first 120 training rows of its data set: the conformance
        suite's specimen."""
        from interp_ray.activations import ActivationExtractor
        from interp_ray.checkpoint import read_checkpoint
        from interp_ray.data import load_dataset

        config = read_checkpoint(classifier, kind="classifier").config
        rows = ActivationExtractor(str(classifier), ["input"])(
            load_dataset(config["data"]["name"], "train").get_batch(np.arange(120)))
        return cls({"selector_width": 4, "approximator_width": 8}, class_names=config["class_names"]).fit(
            rows, rows, VibiTrainConfig(epochs=1, lr=2e-3, ema_decay=None)).save(str(path))

    def save(self, path: str) -> str:
        from interp_ray.checkpoint import save_checkpoint

        return save_checkpoint(path, kind=KIND, config=self.checkpoint_config(), state_dict=self._ready().state_dict())

    @classmethod
    def load(cls, path: str, *, classifier: nn.Module | None = None, device: str | torch.device = "cpu",
             **_: Any) -> "VIBI":
        """A saved VIBI; ``classifier`` (the black box it explains) scores its rationales."""
        from interp_ray.checkpoint import read_explainer

        ckpt = read_explainer(path, METHOD)
        cfg = ckpt.config
        self = cls(cfg["vibi"], class_names=cfg.get("class_names"), device=device, model=classifier)
        self.build(cfg["input_shape"], cfg["num_classes"])
        try:
            self.net.load_state_dict(ckpt.state_dict)
        except RuntimeError as e:
            raise UserError(f"checkpoint {path}: weights do not fit the configured VIBI "
                            f"({str(e).splitlines()[0]})") from None
        self.net.to(self.device).eval()
        self.history, self.info = cfg.get("history", []), cfg.get("info", {})
        return self


def as_batches(data: Iterable[Batch] | Batch) -> list[Batch]:
    """One batch dict, or an iterable of them, as a list of batches of at most ROWS_PER_BATCH rows."""
    if isinstance(data, Mapping):
        n = len(data[INPUT_LAYER])
        return [{k: v[lo:lo + ROWS_PER_BATCH] for k, v in data.items()} for lo in range(0, n, ROWS_PER_BATCH)]
    return list(data)

