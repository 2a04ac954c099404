"""Dong et al. (CVPR 2017), "Improving Interpretability of DNNs with Semantic Information": a video captioner whose
pooled features are trained to predict the videos' latent topics, neuron labels by prediction-difference
maximisation, and human-in-the-loop caption revision through those labels.

The captioner (spec ../shared/PAPERS.md §2; the released Theano code's architecture, sizes scaled down):

    c_1..c_K                     frame features from a pre-trained CNN (zero rows past a video's end, ``mask``)
    h→_i, h←_i = biLSTM(c)       packed by length, so the backward pass starts at the last *real* frame
    v_i = [c_i ; h→_i ; h←_i]    per-frame context
    v̄ = Σ_i m_i v_i / Σ_i m_i    masked mean (padding never counts)
    a = ReLU(W_t v̄ + b_t)        the interpretable layer ("neurons" below are its units)
    ŝ = W_a dropout(a) + b_a     topic prediction; L_I = ||ŝ − s||² (summed over topics)
    decoder                      Yao et al.'s soft-attention LSTM: init (h_0, c_0) = tanh(W g), attention α_t over the
                                 memory, a selector gate β_t = σ(w·h_{t−1}), deep output
                                 logits_t = W_o tanh(E w_{t−1} + W_h h_t + W_c ctx_t)
    loss                         Σ_t −log p(w_t) + λ·L_I + γ·Σ_i (1 − Σ_t α_{t,i})² per sentence, mean over the batch

What the decoder reads (``decoder_reads``) — the paper is silent, the spec notes the released code's choice:

``v``  (the released code) memory = v_i, g = v̄; the interpretable layer is a side head only, so L_I shapes the
       encoder but editing ``a`` cannot change a caption (revision raises a UserError).
``a``  (default here) the interpretable layer is the decoder's only view of the video: memory = the per-frame
       interpretable activations a_i = ReLU(W_t v_i + b_t) (the same units applied to each frame), g = a. Editing
       neuron d edits a_d and every a_{i,d}, so suppressing/boosting labelled neurons changes what is decoded — which
       the human-in-the-loop procedure needs. L_I still acts on a = ReLU(W_t v̄ + b_t) exactly as in the paper.

Neuron labels (spec step 6, a reconstruction): for neuron d, V_d = the ``top_n`` items with the largest a_d;
PD(d, k) = mean_{v ∈ V_d} [f(ŝ_k(v)) − f(ŝ_k(v | a_d ← r))] with f = identity (``diff``) or log of the clamped value
(``log``) and r = 0 (``zero``) or the mean of a_d over all items (``mean``). Word scores are PD(d, ·) @ φ (φ = the
topic–word table), restricted to a concept vocabulary when one is given. The label is the argmax; it is *confident*
when the top score is positive and beats the runner-up by ``margin`` (relative): (top − second) / top ≥ margin.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from interp_ray.errors import UserError
from interp_ray.explainers._captioning.checkpoint import check_vocab_digest, read_captioner, save_captioner
from interp_ray.explainers._captioning.training import (CaptionTrainer, PairBatch, make_pairs, run_epochs,
                                                        sentence_rows, table_batches)
from interp_ray.explainers.base import Batch, EpochTrainer, Explainer, Explanation, Trainable, register
from interp_ray.explainers.semantic.config import (LabelConfig, SemanticConfig, SemanticParams, SemanticTrainConfig,
                                                   SemanticTrainJob)
from interp_ray.explainers.semantic.labels import NeuronLabel
from interp_ray.explainers.semantic.networks import NeuronEdit, SemanticCaptioner, greedy_decode
from interp_ray.explainers.semantic.revision import NeuronRevision
from interp_ray.explainers.semantic.training import (LOSS_METRICS, CaptionData, frame_features, make_caption_data,
                                                     pair_losses)
from interp_ray.text import Vocabulary

METHOD = "semantic"
TOPICS_FILE = "topics.json"
NEURONS_FILE = "neurons.json"
log = logging.getLogger("interp_ray.semantic")


def check_concepts(concepts: Sequence[str] | None, vocabulary: Sequence[str]) -> None:
    """``labels.concepts`` against the words the topics were mined from: none of them there is a UserError (every
    label would fail); some missing is said in the log (a word the captions never use cannot label a neuron)."""
    if not concepts:
        return
    known = set(vocabulary)
    missing = [w for w in concepts if w not in known]
    if len(missing) == len(concepts):
        raise UserError(f"labels.concepts: none of {', '.join(concepts[:8])} is a word of the training captions' "
                        f"topics (stop words removed); name words the captions use, or set labels.concepts: null "
                        f"for every topic word")
    if missing:
        log.warning("labels.concepts: %s never occur in the training captions' topics; they cannot label a neuron",
                    ", ".join(missing))


@register(METHOD)
class SemanticExplainer(Explainer, Trainable, NeuronRevision):
    """Dong et al. (CVPR'17): a video caption plus the labelled interpretable neurons that drove it (labelling and
    revision: ``NeuronRevision``, revision.py)."""

    name = METHOD
    needs = frozenset({"features"})
    produces = frozenset({"sentence", "neurons"})
    learned = True
    Params = SemanticParams
    TrainJob = SemanticTrainJob
    trains_on = frozenset({"captions"})   # its captions, and the topics mined from them

    def __init__(self, config: SemanticConfig | Mapping[str, Any] | None = None, *,
                 device: str | torch.device = "cpu"):
        from interp_ray.config import validate

        self.config = config if isinstance(config, SemanticConfig) else \
            validate(SemanticConfig, dict(config or {}), source="semantic config")
        self.device = torch.device(device)
        self.vocab: Vocabulary | None = None
        self.topics = None                        # interp_ray.topics.TopicModel
        self.model: SemanticCaptioner | None = None
        self.frame_dim: int | None = None
        self.neurons: list[NeuronLabel] = []
        self.label_config: LabelConfig | None = None
        self.history: list[dict] = []
        self.info: dict[str, Any] = {}
        self.frame_column = "features"            # the row column that holds the frame features
        # True when each training row is one still image (a user's image folder or Parquet), not a clip of frames:
        # its layer column is then one frame, and the row a one-frame clip (as ``batch_from`` explains an image)
        self.stills = False
        self.class_names: list[str] | None = None  # of the classifier whose classes label the clips

    # -- set-up and training -----------------------------------------------------------------------------------

    def setup(self, items, topic_model, *, seed: int = 0) -> "SemanticExplainer":
        """Vocabulary from the items' sentences, the topic model, and a seeded fresh captioner."""
        self.vocab = self.vocab or Vocabulary.build([s for row in items.sentences for s in row],
                                                    min_count=self.config.min_count)
        self.topics = topic_model
        self.frame_dim = items.dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = SemanticCaptioner(self.frame_dim, len(self.vocab), topic_model.num_topics, self.config)
        return self

    def caption_data(self, items) -> CaptionData:
        self._ready()
        if items.dim != self.frame_dim:
            raise UserError(f"frame features have {items.dim} values per frame; this captioner was trained on "
                            f"{self.frame_dim}")
        topics = self.topics.transform(items.sentences)
        return make_caption_data(items.features, items.mask, topics, items.sentences, self.vocab,
                                 self.config.max_len)

    def fit(self, train, val=None, *, topic_model=None, settings: SemanticTrainConfig | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> "SemanticExplainer":
        """Train in this process (no Ray) with the epoch trainer a Ray Train worker runs (``trainer``)."""
        from interp_ray.topics import fit_topics

        settings = settings or SemanticTrainConfig()
        if self.model is None:
            if topic_model is None:
                topic_model, _ = fit_topics(train.sentences)
            self.setup(train, topic_model, seed=settings.seed)
        if val is None:
            hold = np.arange(len(train)) % 10 == 9
            train, val = train.subset(np.flatnonzero(~hold)), train.subset(np.flatnonzero(hold))
        for items in (train, val):
            self._check_dim(items.dim)
        torch.manual_seed(settings.seed)
        trainer = self.caption_trainer(settings, device=self.device)

        def columns(items) -> dict[str, Any]:
            return {"features": items.features, "mask": items.mask, "sentences": list(items.sentences)}

        rows = table_batches(columns(train), 256, seed=settings.seed)
        val_rows = table_batches(columns(val), 256)
        history = run_epochs(trainer, rows, val_rows, settings.epochs, self.history, on_epoch)
        self.use_state(trainer.best_state, history)   # best_state is read after training, not before
        return self

    def _check_dim(self, dim: int) -> None:
        if dim != self.frame_dim:
            raise UserError(f"frame features have {dim} values per frame; this captioner was trained on "
                            f"{self.frame_dim}")

    # -- the training protocol (interp_ray.explainers.base.Trainable; jobs/train_explainer.py) ------------------

    def pair_batch(self, batch: Batch, device: torch.device | str = "cpu") -> PairBatch:
        """A batch of clip rows as training input: frame features, mask, the clips' topic vectors (of their own
        captions) and one pair per reference sentence."""
        feats = self.row_frames(batch[self.frame_column])
        self._check_dim(feats.shape[2])
        mask = (np.asarray(batch["mask"], dtype=bool) if "mask" in batch
                else np.ones(feats.shape[:2], dtype=bool))
        sentences = sentence_rows(batch["sentences"], len(feats))
        topics = self.topics.transform(sentences).astype(np.float32)
        pairs = make_pairs(np.zeros((len(feats), 0), np.float32), sentences, self.vocab, self.config.max_len,
                           allow_empty=True)
        return PairBatch({"feats": torch.from_numpy(np.ascontiguousarray(feats)).to(device),
                          "mask": torch.from_numpy(mask).to(device),
                          "topics": torch.from_numpy(topics).to(device)}, pairs)

    def caption_trainer(self, settings: SemanticTrainConfig, *, device: Any = "cpu",
                        wrap: Callable[[nn.Module], nn.Module] | None = None) -> CaptionTrainer:
        wrap = wrap or (lambda m: m.to(device))
        return CaptionTrainer(self.model, prepare=lambda b: self.pair_batch(b, device), loss=pair_losses,
                              epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                              weight_decay=settings.weight_decay, grad_clip=settings.grad_clip, seed=settings.seed,
                              select="nll", metrics=LOSS_METRICS, model=wrap(self.model))

    def row_frames(self, column: Any) -> np.ndarray:
        """A store's frame column as N × K × D frame features: a still image's row is a one-frame clip."""
        return frame_features(np.asarray(column)[:, None] if self.stills else column)

    @classmethod
    def defaults_for(cls, classifier: Any) -> dict[str, Any]:
        """Dong et al. caption a clip from its frames' CNN features, the vector a frame classifier's final layer
        reads: the penultimate role (a spatial column would be pooled per frame anyway)."""
        return {"frame_layer": cls.role_layers(classifier, "penultimate")[0]}

    @classmethod
    def for_classifier(cls, job: SemanticTrainJob, classifier: Any) -> SemanticTrainJob:
        if job.source.layers:
            return job   # the job checks source.layers exist
        layer = cls.defaults_for(classifier)["frame_layer"]
        return job.model_copy(update={"source": job.source.model_copy(update={"layers": [layer]})})

    @classmethod
    def from_rows(cls, job: SemanticTrainJob, rows: Callable[[], Iterable[Batch]], *,
                  class_names: Sequence[str] | None = None, store: Mapping[str, Any] | None = None
                  ) -> "SemanticExplainer":
        """One streaming pass over the training rows for their captions (text only: LDA topics and the vocabulary
        are fitted on them) and the frame-feature width; then a seeded captioner. The rows are clips when the
        store's dataset has T×C×H×W inputs (``scene_clips``), else still images, each a one-frame clip."""
        from types import SimpleNamespace

        from interp_ray.topics import fit_topics

        self = cls(job.explainer)
        self.frame_column = job.frame_column
        shape = ((store or {}).get("dataset") or {}).get("image_shape")
        self.stills = shape is not None and len(shape) == 3
        sentences: list[list[str]] = []
        dim = None
        for batch in rows():
            feats = self.row_frames(batch[job.frame_column])
            dim = int(feats.shape[2])
            sentences.extend(sentence_rows(batch["sentences"], len(feats)))
        if dim is None:
            raise UserError("no training rows: the data is empty")
        topic_model, _ = fit_topics(sentences, job.topics)
        check_concepts(job.labels.concepts, topic_model.vocabulary)
        self.class_names = list(class_names) if class_names else None
        self.setup(SimpleNamespace(sentences=sentences, dim=dim), topic_model, seed=job.train.seed)
        src, opts = job.source, job.source.data.options
        # ``data`` in the shape serving and ``revise-caption`` read: which CNN layer, over which clips or images.
        data = {"source": "scenes" if src.data.name == "scene_clips" else src.data.name, "layer": job.frame_column,
                "checkpoint": src.checkpoint, "frames": 1 if self.stills else opts.get("frames", 8)}
        if self.stills:
            data["stills"] = True
        else:
            data.update(seed=opts.get("seed", 0), size=opts.get("size", 64),
                        sentences_per_clip=opts.get("sentences_per_image", 5))
        self.info = {"data": data, "source": src.model_dump(), "topics": job.topics.model_dump(),
                     "frame_column": job.frame_column}
        return self

    def train_columns(self) -> list[str]:
        return [self.frame_column, "sentences"]

    def trainer(self, job: SemanticTrainJob, *, device: Any = "cpu",
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> EpochTrainer:
        return self.caption_trainer(job.train, device=device, wrap=wrap)

    def use_state(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> None:
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.history = [dict(h) for h in history]

    def finish(self, job: SemanticTrainJob, rows: Callable[[], Iterable[Batch]]) -> dict[str, Any]:
        """Label the neurons by prediction difference on the training clips (streamed: only the interpretable
        layer's activations, N × D, are gathered)."""
        acts = []
        for batch in rows():
            feats = self.row_frames(batch[self.frame_column])
            mask = batch["mask"] if "mask" in batch else None
            acts.append(self.encode(feats, mask)["a"])
        labels = self.label_activations(np.concatenate(acts), job.labels)
        return {"neurons": len(labels), "confident": sum(n.confident for n in labels)}

    def _ready(self) -> None:
        if self.model is None or self.vocab is None or self.topics is None:
            raise UserError("this semantic explainer is not trained: call fit() or load a checkpoint")

    # -- features and captions (labels and revision: NeuronRevision) -----------------------------------------

    def _tensors(self, feats: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.as_tensor(np.asarray(feats, dtype=np.float32))
        if f.ndim != 3:
            raise UserError(f"features must be N × K × D frame features, got shape {tuple(f.shape)}")
        if f.shape[2] != self.frame_dim:
            raise UserError(f"frame features have {f.shape[2]} values per frame; this captioner was trained on "
                            f"{self.frame_dim}")
        m = torch.ones(f.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask, bool))
        if m.shape != f.shape[:2] or not bool(m.any(1).all()):
            raise UserError("mask must be N × K with at least one real frame per video")
        return f, m

    @torch.no_grad()
    def encode(self, feats: Any, mask: Any = None, *, batch_size: int = 512) -> dict[str, np.ndarray]:
        """v̄, a and ŝ of every video (eval mode)."""
        self._ready()
        f, m = self._tensors(feats, mask)
        self.model.eval()
        out: dict[str, list] = {"vbar": [], "a": [], "s_hat": []}
        for lo in range(0, len(f), batch_size):
            enc = self.model.encode(f[lo:lo + batch_size], m[lo:lo + batch_size])
            out["vbar"].append(enc.vbar.numpy())
            out["a"].append(enc.a.numpy())
            out["s_hat"].append(enc.s_hat.numpy())
        return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}

    def caption(self, feats: Any, mask: Any = None, *, edit: NeuronEdit | None = None,
                max_len: int | None = None) -> list[str]:
        self._ready()
        if edit and self.config.decoder_reads == "v":
            raise UserError("this captioner's decoder does not read the interpretable layer (decoder_reads: v, the "
                            "released code's design), so editing neurons cannot change its captions; train with "
                            "decoder_reads: a")
        f, m = self._tensors(feats, mask)
        ids, _ = greedy_decode(self.model, f, m, max_len=max_len or self.config.max_len, start=self.vocab.start,
                               end=self.vocab.end, edit=edit)
        return [self.vocab.decode(s) for s in ids]

    # -- the explainer protocol ------------------------------------------------------------------------------

    @classmethod
    def takes_target(cls) -> bool:
        return True  # an image is captioned as a clip of the target class (else of the prediction)

    def layers(self) -> list[str]:
        """The classifier layer its frame features were taken from (``data.layer`` of its training job): a still
        image is explained as a one-frame clip of that layer's pooled features."""
        data = (self.info or {}).get("data") or {}
        if data.get("source", "scenes") == "video_features":
            raise UserError(f"{self.name} was trained on frame features of another CNN (data.source "
                            f"{data['source']!r}), not on a classifier checkpoint's")
        if not data.get("layer"):
            raise UserError(f"{self.name}'s checkpoint does not record the classifier layer of its frame features "
                            f"(data.layer); train it with jobs.train_explainer")
        return [str(data["layer"])]

    def batch_from(self, images: np.ndarray, targets: np.ndarray,
                   activations: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Each image as a one-frame clip: ``features`` N × 1 × D (its frame feature, pooled as the training clips'
        frames were), an all-true ``mask`` N × 1, and ``label`` (the target, else the classifier's prediction)."""
        if activations is None:
            raise UserError(f"{self.name} explains images through their frame features: give the activations of "
                            f"{self.layers()[0]!r}")
        feats = frame_features(np.asarray(activations[self.layers()[0]])[:, None])[:, 0]
        if self.frame_dim is not None and feats.shape[1] != self.frame_dim:
            raise UserError(f"{self.name} was trained on {self.frame_dim}-value frame features; layer "
                            f"{self.layers()[0]!r} gives {feats.shape[1]}")
        targets = np.asarray(targets, dtype=np.int64)
        return {"features": feats[:, None, :], "mask": np.ones((len(feats), 1), dtype=bool),
                "label": np.where(targets >= 0, targets, activations["prediction"]).astype(np.int64)}

    def explain(self, batch: Mapping[str, Any], params: BaseModel | dict | None = None) -> list[Explanation]:
        p = self.parse_params(params)
        self._ready()
        if "features" not in batch:
            raise UserError("the semantic explainer reads 'features' (N × K × D frame features) and optional 'mask'")
        edit = self.make_edit(p.suppress, p.boost, match=p.match) if (p.suppress or p.boost) else None
        sentences = self.caption(batch["features"], batch.get("mask"), edit=edit, max_len=p.max_len)
        f, m = self._tensors(batch["features"], batch.get("mask"))
        with torch.no_grad():
            enc = self.model.encode(f, m, edit)
        acts, s_hat = enc.a.numpy(), enc.s_hat.numpy()
        labels = np.asarray(batch.get("label", np.full(len(sentences), -1)), dtype=np.int64)
        out = []
        for i, sentence in enumerate(sentences):
            out.append(Explanation(label=int(labels[i]), label_name=self.class_name(int(labels[i])),
                                   method=self.name, sentence=sentence,
                                   neurons=self.driving_neurons(acts[i], p.top_neurons),
                                   extra={"topics": [int(k) for k in np.argsort(-s_hat[i])[:3]],
                                          "edit": asdict(edit) if edit else None}))
        return out

    def class_name(self, label: int) -> str | None:
        names = self.class_names
        return names[label] if names and 0 <= label < len(names) else None

    @classmethod
    def from_classifier(cls, classifier: Any, checkpoint: str | None = None, *, device: str | None = None,
                        **options: Any) -> "SemanticExplainer":
        """As every learned method, on the CPU unless told otherwise: the captioner decodes step by step on the CPU
        tensors it makes of its (small) features, whatever device the classifier that computed them runs on. The
        labels it explains are the classifier's classes (a target, or its prediction), so their names are the
        classifier's (checkpoints written before they kept names have none)."""
        self = super().from_classifier(classifier, checkpoint, device=device or "cpu", **options)
        if classifier is not None and classifier.class_names:
            self.class_names = list(classifier.class_names)
        return self

    # -- checkpoints -----------------------------------------------------------------------------------------

    def checkpoint_config(self) -> dict[str, Any]:
        return {"explainer": METHOD, "semantic": self.config.model_dump(), "frame_dim": self.frame_dim,
                "num_topics": self.topics.num_topics, "vocab_size": len(self.vocab),
                "vocab_digest": self.vocab.digest, "history": self.history, "info": self.info,
                "class_names": self.class_names}

    def files(self) -> dict[str, bytes]:
        """What the checkpoint keeps beside the weights and the vocabulary: the topic model and the neuron labels."""
        files = {TOPICS_FILE: self.topics.to_json().encode()}
        if self.neurons:
            files[NEURONS_FILE] = json.dumps({"config": self.label_config.model_dump() if self.label_config else None,
                                              "neurons": [asdict(n) for n in self.neurons]}).encode()
        return files

    specimen_classifier = "scenes"

    @classmethod
    def specimen(cls, path, classifier) -> str:
        """A small captioner (1 epoch) on 2-frame scene clips with frame features from the classifier's ``gap``
        layer, recorded in its checkpoint as ``jobs.train_explainer`` records it: the conformance suite's specimen."""
        from interp_ray.activations import clip_items
        from interp_ray.data.scenes import load_scene_videos

        clips = load_scene_videos("train", n=40, frames=2, size=32, sentences_per_image=2)
        items = clip_items(str(classifier), clips, "gap")
        torch.manual_seed(4)
        ex = cls({"enc_hidden": 8, "interp_dim": 8, "word_dim": 8, "dec_hidden": 16, "att_dim": 8, "max_len": 10})
        ex.fit(items, settings=SemanticTrainConfig(epochs=1, batch_size=16))
        ex.info = {"data": {"source": "scenes", "layer": "gap", "frames": 2, "size": 32}}
        ex.label(items, cfg=LabelConfig(top_n=5, margin=0.0))
        return ex.save(str(path))

    def save(self, path: str) -> str:
        self._ready()
        return save_captioner(path, config=self.checkpoint_config(), state_dict=self.model.state_dict(),
                              vocab=self.vocab, files=self.files())

    @classmethod
    def load(cls, path: str, *, device: str | torch.device = "cpu", **_: Any) -> "SemanticExplainer":
        from interp_ray.topics import TopicModel

        ckpt, vocab = read_captioner(path, METHOD, required=[TOPICS_FILE])
        cfg = ckpt.config
        self = cls(cfg["semantic"], device=device)
        self.vocab = vocab
        check_vocab_digest(vocab, cfg, path)
        self.topics = TopicModel.from_json(ckpt.files[TOPICS_FILE], source=f"{path}/{TOPICS_FILE}")
        self.frame_dim = int(cfg["frame_dim"])
        self.history, self.info = cfg.get("history", []), cfg.get("info", {})
        self.frame_column = self.info.get("frame_column", "features")
        self.stills = bool((self.info.get("data") or {}).get("stills"))
        self.class_names = cfg.get("class_names")
        self.model = SemanticCaptioner(self.frame_dim, len(self.vocab), self.topics.num_topics, self.config)
        try:
            self.model.load_state_dict(ckpt.state_dict)
        except RuntimeError as e:
            raise UserError(f"checkpoint {path}: weights do not fit the configured captioner "
                            f"({str(e).splitlines()[0]})") from None
        if NEURONS_FILE in ckpt.files:
            raw = json.loads(ckpt.files[NEURONS_FILE])
            self.neurons = [NeuronLabel(**n) for n in raw["neurons"]]
            self.label_config = LabelConfig.model_validate(raw["config"]) if raw.get("config") else None
        self.model.to(self.device).eval()
        return self
