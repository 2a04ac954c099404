"""InterpNET (Barratt, NIPS'17 Interpretable ML Symposium): a language model that reads the classifier's own layers.

The classifier (as in the paper: an MLP over frozen image features) is trained first and then frozen. Its
introspection vector r(x) = [h_0, h_1, …, h_K, p] — the input features, every hidden ReLU layer and the class
probabilities — is computed under ``torch.no_grad`` and detached (the paper's stop-gradient), so explainer training
cannot change the classifier. A two-layer LSTM (LRCN-2f) then learns to write the reference sentences:

    e_t = E[w_{t-1}]                     word embedding (uniform [-1, 1] init); w_0 = <start> (id 0)
    o¹_t = LSTM₁(e_t)                    dropout on the output (keep 0.8)
    u_t = W₁ [o¹_t ; r(x)] + b₁          r(x) enters the *second* layer (linear, no nonlinearity)
    o²_t = LSTM₂(u_t)                    dropout on the output
    logits_t = W₂ o²_t + b₂

Loss: per-sentence mean token cross-entropy (padding masked), averaged over the batch; every image appears once per
reference sentence. Adam, the best epoch by validation loss is kept, the learning rate halves after every epoch
without improvement (the paper's schedule). Decoding: greedy (the paper's evaluation) or beam search with the
length normalisation of the paper's code, ((5 + |y|) / 6)^α with α = 0.7.

Variants (``VARIANTS``; r(x) and the classifier's hidden sizes, from the paper's code):

    captioning    r = h_0            classifier: softmax regression on h_0 (only its accuracy is reported)
    interpnet_0   r = p              classifier: softmax regression on h_0 ("output only")
    interpnet_1   r = [h_0, h_1, p]  classifier: [500]
    interpnet_2   r = [h_0, h_1, h_2, p]  classifier: [500, 300]
    interpnet_3   r = [h_0 … h_3, p] classifier: [500, 300, 200] (not in the paper's code: a reconstruction)

Where the layers come from (``classifier``):

``head``   (default, the paper's setup) h_0 = one activation column of a frozen image model (e.g. a CNN layer,
           spatially averaged), standardised with training-set statistics; h_1..h_K and p come from an MLP head
           trained here on (h_0, label) — the paper's "classifier". Its weights are saved with the explainer.
``store``  the activation store's own model is the classifier: h_0 = ``feature_layer``, h_1.. = ``layers``,
           p = the ``probabilities`` column (e.g. the scenes CNN's taps: gap, relu_fc, softmax).

Data in: batch dicts of numpy arrays in the activation store's layout — ``id``, ``label``, one column per layer,
``probabilities``, ``prediction`` and, for training, ``sentences`` (N×K strings or lists; blanks are ignored).
``collect`` turns an iterable of such batches into an ``ActivationTable``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers._captioning.checkpoint import (VOCAB_FILE, check_vocab_digest, read_captioner,
                                                          save_captioner)
from interp_ray.explainers._captioning.training import PairArrays, PairBatch, make_pairs, run_epochs, table_batches
from interp_ray.explainers.base import (Batch, EpochTrainer, Explainer, Explanation, Trainable, check_named_layers,
                                        register)
from interp_ray.explainers.interpnet.config import (ClassifierTrainConfig, DecoderTrainConfig, InterpNETConfig,
                                                    InterpNETParams, InterpNETTrainJob)
from interp_ray.explainers.interpnet.decoding import beam_decode, greedy_decode
from interp_ray.explainers.interpnet.networks import FeatureMLP, LRCN2f
from interp_ray.explainers.interpnet.tables import (ROWS_PER_BATCH, ActivationTable, FeatureStats, collect,
                                                    table_columns)
from interp_ray.explainers.interpnet.training import HeadTrainer, InterpNETTrainer, state_digest
from interp_ray.text import Vocabulary

METHOD = "interpnet"


@register(METHOD)
class InterpNET(Explainer, Trainable):
    """InterpNET (Barratt 2017): sentences from the frozen classifier's introspection vector [h_0, …, h_K, p]."""

    name = METHOD
    needs = frozenset({"activations"})
    produces = frozenset({"sentence"})
    learned = True
    Params = InterpNETParams
    TrainJob = InterpNETTrainJob
    trains_on = frozenset({"captions"})   # the reference sentences it learns to write

    def __init__(self, config: InterpNETConfig | Mapping[str, Any] | None = None, *,
                 class_names: Sequence[str] | None = None, device: str | torch.device = "cpu"):
        if isinstance(config, InterpNETConfig):
            self.config = config
        else:
            from interp_ray.config import validate

            self.config = validate(InterpNETConfig, dict(config or {}), source="interpnet config")
        self.class_names = list(class_names) if class_names is not None else None
        self.device = torch.device(device)
        self.vocab: Vocabulary | None = None
        self.dims: dict[str, int] | None = None          # column -> width, fixed by the training data
        self.num_classes: int | None = None
        self.head: FeatureMLP | None = None
        self.norm_mean: torch.Tensor | None = None       # store mode: h_0 standardisation
        self.norm_std: torch.Tensor | None = None
        self.decoder: LRCN2f | None = None
        self.classifier_trained = False
        self.history: dict[str, list] = {"classifier": [], "explainer": []}
        self.info: dict[str, Any] = {}                   # provenance (source checkpoint, data) saved with it

    # -- set-up ----------------------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        return self.config.columns()

    def layers(self) -> list[str]:
        from interp_ray.activations import RESERVED_COLUMNS

        return [c for c in self.columns if c not in RESERVED_COLUMNS]

    def table(self, data: Any, *, need_sentences: bool = False) -> ActivationTable:
        return collect(data, self.columns, pool=self.config.feature_pool, need_sentences=need_sentences)

    def setup(self, train: ActivationTable, *, num_classes: int | None = None) -> "InterpNET":
        """Fix vocabulary, input widths, the (untrained) classifier head and the decoder from the training data."""
        if train.sentences is None:
            raise UserError("training data has no 'sentences' column: InterpNET learns from reference sentences")
        stats = FeatureStats()
        stats.add(train, self.config.feature_layer)
        return self._build(stats, train.all_sentences(), num_classes=num_classes)

    def _build(self, stats: "FeatureStats", sentences: Iterable[str], *, num_classes: int | None = None
               ) -> "InterpNET":
        """What ``setup`` fixes, from statistics of the training rows and their sentences (any iterable, consumed
        once) — so a streaming pass over the store gives the same explainer as an in-memory table."""
        cfg = self.config
        if self.vocab is None:
            self.vocab = Vocabulary.build(sentences, min_count=cfg.min_count)
        else:
            self.vocab.check_covers(list(sentences), source="the training data")
        if not stats.rows:
            raise UserError("no training rows: the data is empty")
        dims = stats.dims
        if self.dims is not None and dims != self.dims:
            raise UserError(f"activation widths {dims} differ from the explainer's {self.dims}")
        self.dims = dims
        if num_classes is None:
            if cfg.classifier == "store":
                num_classes = dims["probabilities"]
            elif self.class_names is not None:
                num_classes = len(self.class_names)
            else:
                num_classes = stats.max_label + 1
        self.num_classes = int(num_classes)
        mean, std = stats.mean_std()
        # Fixed initial weights (seeded here, without touching the caller's random state): the same data and config
        # always start from the same classifier and explainer, in any process.
        with torch.random.fork_rng(devices=[]):
            if cfg.classifier == "head" and self.head is None:
                torch.manual_seed(0)
                self.head = FeatureMLP(dims[cfg.feature_layer], cfg.head_hidden, self.num_classes)
                self.head.mean.copy_(mean)
                self.head.std.copy_(std)
            elif cfg.classifier == "store" and self.norm_mean is None:
                self.norm_mean, self.norm_std = mean, std
            if self.decoder is None:
                torch.manual_seed(1)
                self.decoder = LRCN2f(len(self.vocab), self.r_dim, embed_dim=cfg.embed_dim,
                                      hidden_dim=cfg.hidden_dim, dropout=cfg.dropout)
        return self

    @property
    def r_dim(self) -> int:
        cfg, d = self.config, self.dims
        h0 = d[cfg.feature_layer]
        if cfg.classifier == "head":
            hidden, p = sum(cfg.head_hidden), self.num_classes
        else:
            hidden, p = sum(d[c] for c in cfg.layers), d["probabilities"]
        return {"input": h0, "output": p, "all": h0 + hidden + p}[cfg.spec.parts]

    def _ready(self) -> None:
        if self.decoder is None or self.vocab is None:
            raise UserError("this InterpNET explainer is not trained: call fit() or load a checkpoint")

    # -- the classifier and r(x) -----------------------------------------------------------------------------

    def fit_classifier(self, train: Any, val: Any, settings: ClassifierTrainConfig | None = None) -> list[dict]:
        """Train the classifier head (head mode) on (h_0, label), then freeze it. Step 1 of the paper's Algorithm 1,
        in this process, with the same ``HeadTrainer`` a Ray Train worker runs."""
        if self.config.classifier != "head":
            return []
        train_t, val_t = self.table(train, need_sentences=self.vocab is None), self.table(val)
        if self.decoder is None:
            self.setup(train_t)
        settings = settings or ClassifierTrainConfig()
        self.head.requires_grad_(True)
        trainer = HeadTrainer(self.head, self.head_features, settings)
        rows = table_batches(table_columns(train_t, self.columns), ROWS_PER_BATCH, seed=settings.seed)
        val_rows = table_batches(table_columns(val_t, self.columns), ROWS_PER_BATCH)
        hist = [trainer.run_epoch(epoch, rows(epoch), val_rows(epoch)) for epoch in range(settings.epochs)]
        self.head.load_state_dict(trainer.best_state)
        self.freeze_classifier()
        self.history["classifier"] = hist
        return hist

    def freeze_classifier(self) -> None:
        if self.head is not None:
            self.head.requires_grad_(False)
            self.head.eval()
        self.classifier_trained = True

    def _check_widths(self, t: ActivationTable) -> None:
        for c in self.columns:
            got = int(t.columns[c].shape[1])
            if got != self.dims[c]:
                raise UserError(f"column {c!r} has {got} values per row; this explainer was trained on "
                                f"{self.dims[c]} (activations of a different model or layer)")

    @torch.no_grad()
    def introspect(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(r(x), p(x)) for every row: float32 N×R and N×classes, detached — the paper's stop-gradient."""
        t = self.table(data)
        self._check_widths(t)
        cfg = self.config
        h0_raw = torch.as_tensor(t.columns[cfg.feature_layer], dtype=torch.float32)
        if cfg.classifier == "head":
            if self.head is None:
                raise UserError("the classifier head is not built: call fit() or load a checkpoint")
            self.head.eval()
            h0_raw = h0_raw.to(self.head.mean.device)  # the head may sit on a worker's GPU
            outs = self.head.layer_outputs(h0_raw)
            h0, hidden, probs = outs[0], outs[1:-1], torch.softmax(outs[-1], dim=1)
        else:
            h0 = (h0_raw - self.norm_mean) / self.norm_std
            hidden = [torch.as_tensor(t.columns[c], dtype=torch.float32) for c in cfg.layers]
            probs = torch.as_tensor(t.columns["probabilities"], dtype=torch.float32)
        parts = {"input": [h0], "output": [probs], "all": [h0, *hidden, probs]}[cfg.spec.parts]
        return torch.cat(parts, dim=1).detach().cpu(), probs.detach().cpu()

    def predict(self, data: Any) -> np.ndarray:
        """The classifier's predicted class per row (head: the MLP; store: the activation model's argmax)."""
        return self.introspect(data)[1].argmax(1).numpy()

    # -- training ------------------------------------------------------------------------------------------

    def training_pairs(self, data: Any) -> PairArrays:
        t = self.table(data, need_sentences=True)
        r, _ = self.introspect(t)
        return make_pairs(r.numpy(), t.sentences, self.vocab, self.config.max_len)

    def head_features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_0, label) of a row batch on the head's device: what the classifier head trains on."""
        t = collect(batch, [self.config.feature_layer], pool=self.config.feature_pool)
        dev = self.head.mean.device
        return (torch.as_tensor(t.columns[self.config.feature_layer], dtype=torch.float32).to(dev),
                torch.as_tensor(t.labels, dtype=torch.int64).to(dev))

    def pair_batch(self, batch: Batch, device: torch.device | str = "cpu") -> PairBatch:
        """A row batch as the explainer network's training input: r(x) of each row (frozen, detached) and one pair
        per reference sentence."""
        t = self.table(batch, need_sentences=True)
        r, _ = self.introspect(t)
        pairs = make_pairs(np.zeros((len(t), 0), np.float32), t.sentences, self.vocab, self.config.max_len,
                           allow_empty=True)
        return PairBatch({"r": r.to(device)}, pairs)

    def fit(self, data: Any, val: Any = None, *, classifier_train: ClassifierTrainConfig | None = None,
            train: DecoderTrainConfig | None = None, on_epoch: Callable[[dict], None] | None = None) -> "InterpNET":
        """Algorithm 1 of the paper, in this process, with the trainer a Ray Train worker runs (``trainer``): train
        the classifier (unless already trained), freeze it, then the explainer network on every (image, reference
        sentence) pair; keeps the best epoch by val loss.

        ``data``/``val``: ActivationTables or iterables of activation batches. Without ``val``, every 10th training
        image is held out for model selection.
        """
        train_t = self.table(data, need_sentences=True)
        if val is None:
            hold = np.arange(len(train_t)) % 10 == 9
            train_t, val_t = train_t.subset(np.flatnonzero(~hold)), train_t.subset(np.flatnonzero(hold))
        else:
            val_t = self.table(val, need_sentences=True)
        self.setup(train_t)
        classifier_train, settings = classifier_train or ClassifierTrainConfig(), train or DecoderTrainConfig()
        torch.manual_seed(settings.seed)
        trainer = InterpNETTrainer(self, classifier_train, settings, device=self.device)
        rows = table_batches(table_columns(train_t, self.columns), ROWS_PER_BATCH, seed=settings.seed)
        val_rows = table_batches(table_columns(val_t, self.columns), ROWS_PER_BATCH)
        history = run_epochs(trainer, rows, val_rows, trainer.epochs,
                             [*self.history["classifier"], *self.history["explainer"]], on_epoch)
        self.use_state(trainer.best_state, history)
        return self

    # -- the training protocol (interp_ray.explainers.base.Trainable; jobs/train_explainer.py) ------------------

    @classmethod
    def defaults_for(cls, classifier: Any) -> dict[str, Any]:
        """h_0 is the classifier's image features, the vector its final layer reads (the paper's h_0 is the
        pooled CNN features of CUB images): its penultimate role. In store mode r(x) concatenates h_0, the hidden
        layers the config names (``layers``: none by default) and the classifier's probabilities."""
        return {"feature_layer": cls.role_layers(classifier, "penultimate")[0]}

    @classmethod
    def for_classifier(cls, job: InterpNETTrainJob, classifier: Any) -> InterpNETTrainJob:
        cfg = job.explainer
        if cfg.feature_layer is None:
            cfg = cfg.model_copy(update=cls.defaults_for(classifier))
        else:
            check_named_layers(cls, classifier, [cfg.feature_layer], field="explainer.feature_layer")
        if cfg.layers:
            check_named_layers(cls, classifier, cfg.layers, field="explainer.layers")
        return job.model_copy(update={"explainer": cfg})

    @classmethod
    def from_rows(cls, job: InterpNETTrainJob, rows: Callable[[], Iterable[Batch]], *,
                  class_names: Sequence[str] | None = None, store: Mapping[str, Any] | None = None
                  ) -> "InterpNET":
        """One streaming pass over the training rows: the vocabulary (word counts), the activation widths and h_0's
        mean and standard deviation — nothing else of the rows is kept."""
        self = cls(job.explainer, class_names=class_names)
        stats = FeatureStats()

        def sentences() -> Iterable[str]:
            for batch in rows():
                t = self.table(batch, need_sentences=True)
                stats.add(t, self.config.feature_layer)
                yield from t.all_sentences()

        return self._build(stats, sentences())

    def train_columns(self) -> list[str]:
        return [*self.columns, "label", "sentences"]

    def trainer(self, job: InterpNETTrainJob, *, device: Any = "cpu",
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> EpochTrainer:
        return InterpNETTrainer(self, job.classifier_train, job.train, device=device, wrap=wrap)

    def use_state(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        self.load_classifier_state(state["classifier"])
        self.decoder.load_state_dict(state["decoder"])
        self.decoder.to(self.device).eval()
        if self.head is not None:
            self.head.to(self.device)
        self.freeze_classifier()
        self.history = {"classifier": [dict(h) for h in history if h.get("phase") == "classifier"],
                        "explainer": [dict(h) for h in history if h.get("phase") != "classifier"]}

    def load_classifier_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """The inverse of ``classifier_state``."""
        if self.head is not None:
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        elif "norm.mean" in state:
            self.norm_mean, self.norm_std = state["norm.mean"], state["norm.std"]

    # -- explaining ----------------------------------------------------------------------------------------

    def generate(self, r: torch.Tensor, *, beam_width: int = 1, max_len: int | None = None
                 ) -> tuple[list[str], list[float]]:
        """Sentences for introspection vectors ``r`` (N×R): greedy when ``beam_width`` is 1, else beam search."""
        self._ready()
        max_len = max_len or self.config.max_len
        self.decoder.to(self.device)
        r = r.to(self.device)
        if beam_width == 1:
            ids, scores = greedy_decode(self.decoder, r, max_len=max_len, start=self.vocab.start, end=self.vocab.end)
        else:
            ids, scores = beam_decode(self.decoder, r, beam_width=beam_width, max_len=max_len,
                                      start=self.vocab.start, end=self.vocab.end, alpha=self.config.length_penalty)
        return [self.vocab.decode(s) for s in ids], scores

    def explain(self, batch: Mapping[str, Any], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        self._ready()
        r, probs = self.introspect(batch)
        sentences, scores = self.generate(r, beam_width=p.beam_width, max_len=p.max_len)
        preds = probs.argmax(1).tolist()
        return [Explanation(label=int(c), label_name=self.class_names[c] if self.class_names else None,
                            method=self.name, sentence=s,
                            extra={"variant": self.config.variant, "probability": float(probs[i, c]),
                                   "log_prob": float(sc)})
                for i, (c, s, sc) in enumerate(zip(preds, sentences, scores))]

    # -- checkpoints -----------------------------------------------------------------------------------------

    def classifier_state(self) -> dict[str, torch.Tensor]:
        if self.head is not None:
            return {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.norm_mean is not None:
            return {"norm.mean": self.norm_mean, "norm.std": self.norm_std}
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._ready()
        return {**self.classifier_state(), **{f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}}

    def checkpoint_config(self) -> dict[str, Any]:
        return {"explainer": METHOD, "interpnet": self.config.model_dump(), "class_names": self.class_names,
                "dims": self.dims, "num_classes": self.num_classes, "r_dim": self.r_dim,
                "vocab_size": len(self.vocab), "vocab_digest": self.vocab.digest,
                "classifier_trained": self.classifier_trained,
                "classifier_digest": state_digest(self.classifier_state()),
                "history": self.history, "info": self.info}

    @classmethod
    def specimen(cls, path, classifier) -> str:
        """A small InterpNET (1 epoch) over the classifier's mean-pooled ``relu2`` for the first 120 training rows of
        its data set, on one sentence per class: the conformance suite's specimen."""
        from interp_ray.activations import ActivationExtractor
        from interp_ray.checkpoint import read_checkpoint
        from interp_ray.data import load_dataset

        config = read_checkpoint(classifier, kind="classifier").config
        names = config["class_names"]
        ds = load_dataset(config["data"]["name"], "train")
        table = collect(ActivationExtractor(str(classifier), ["relu2"])(ds.get_batch(np.arange(120))), ["relu2"])
        table.sentences = [[f"this is a {names[int(c)]} ."] for c in table.labels]
        torch.manual_seed(2)
        ex = cls({"feature_layer": "relu2", "variant": "interpnet_1", "hidden": [16], "embed_dim": 8,
                  "hidden_dim": 16, "max_len": 8}, class_names=names)
        ex.fit(table, table, classifier_train=ClassifierTrainConfig(epochs=1), train=DecoderTrainConfig(epochs=1))
        return ex.save(str(path))

    def save(self, path: str) -> str:
        self._ready()
        return save_captioner(path, config=self.checkpoint_config(), state_dict=self.state_dict(), vocab=self.vocab)

    @classmethod
    def load(cls, path: str, *, device: str | torch.device = "cpu", **_: Any) -> "InterpNET":
        ckpt, vocab = read_captioner(path, METHOD)
        cfg = ckpt.config
        self = cls(cfg["interpnet"], class_names=cfg.get("class_names"), device=device)
        self.vocab = vocab
        self.dims, self.num_classes = {k: int(v) for k, v in cfg["dims"].items()}, int(cfg["num_classes"])
        self.history, self.info = cfg.get("history", self.history), cfg.get("info", {})
        state = ckpt.state_dict
        emb = state.get("decoder.embed.weight")
        if emb is None or emb.shape[0] != len(self.vocab) or state["decoder.out.weight"].shape[0] != len(self.vocab):
            rows = None if emb is None else emb.shape[0]
            raise UserError(f"vocabulary mismatch in {path}: {VOCAB_FILE} lists {len(self.vocab)} tokens but the "
                            f"weights were trained with {rows}")
        check_vocab_digest(self.vocab, cfg, path)
        c = self.config
        if c.classifier == "head":
            self.head = FeatureMLP(self.dims[c.feature_layer], c.head_hidden, self.num_classes)
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        else:
            self.norm_mean, self.norm_std = state["norm.mean"], state["norm.std"]
        self.decoder = LRCN2f(len(self.vocab), self.r_dim, embed_dim=c.embed_dim, hidden_dim=c.hidden_dim,
                              dropout=c.dropout)
        try:
            self.decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
        except RuntimeError as e:
            raise UserError(f"checkpoint {path}: weights do not fit the configured explainer "
                            f"({str(e).splitlines()[0]})") from None
        self.classifier_trained = bool(cfg.get("classifier_trained", True))
        if self.classifier_trained:  # a run's starting point holds an untrained head: its first phase trains it
            self.freeze_classifier()
        elif self.head is not None:
            self.head.eval()
        self.decoder.to(self.device).eval()
        return self
