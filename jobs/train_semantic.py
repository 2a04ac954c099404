"""Train the Dong et al. captioner with Ray Train (TorchTrainer, DDP), one checkpoint per epoch, resumable.

    python -m jobs.train_semantic --config configs/semantic_scenes.yaml [--set explainer.interp_weight=0]
    interp-ray train-semantic --config configs/semantic_scenes.yaml

The driver loads the train/val videos (generated scene clips through the frame CNN, or an MSR-VTT-style directory of
per-video frame-feature files — ``data.source``), fits LDA topics on the training captions, builds the vocabulary
and a seeded initial captioner, and writes that starting point to ``<run>/semantic_init`` (reused as-is when the run
resumes, so topics and vocabulary never change under a resumed run). The arrays go to the workers through the
object store; every worker trains its shard of the (video, sentence) pairs with DDP and rank 0 reports a checkpoint
each epoch (weights, optimiser, best-so-far weights, history). A rerun with the same ``run.name`` and
``run.storage_path`` resumes from the last checkpoint. The best epoch (validation NLL) is exported to ``output``,
its neurons labelled by prediction difference on the training videos (``labels``) and saved with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from interp_ray.checkpoint import read_checkpoint
from interp_ray.config import RunSection, ScalingSection, Section, load_config
from interp_ray.data.video_features import VideoItems, read_video_features, scene_clip_items
from interp_ray.errors import UserError
from interp_ray.explainers.semantic import (LabelConfig, SemanticConfig, SemanticExplainer, SemanticTrainConfig,
                                            SemanticTrainer)
from interp_ray.topics import TopicConfig, fit_topics
from jobs.common import base_parser, check_storage_paths, exit_with, init_ray
from jobs.train_loop import (epochs, final_checkpoint, make_trainer, rank_and_world, report_epoch, resolve_use_gpu,
                             resume, run_path, weights_swapped, worker_history)

log = logging.getLogger("interp_ray.train_semantic")
MODEL_DIR = "model"
INIT_DIR = "semantic_init"
CACHE_VERSION = 1
ATTRIBUTE_CONCEPTS = "attributes"   # labels.concepts shorthand: the scenes' attribute words


# --- config ------------------------------------------------------------------------------------------------------

class VideoDataSection(Section):
    """Where the videos come from (``source``) and how many."""

    source: Literal["scenes", "video_features"] = "scenes"
    frames: int = Field(8, gt=0)                   # K (paper: 28); longer videos keep K equally spaced frames
    rows: dict[str, int | None] = Field(default_factory=lambda: {"train": 1200, "val": 240, "test": 240})
    # source=scenes: generated clips through a trained scenes CNN
    checkpoint: str = "/tmp/interp-ray-scenes-cnn"
    layer: str = "gap"
    seed: int = 0
    size: int = 64
    sentences_per_clip: int = Field(5, ge=1, le=10)
    cache_dir: str | None = None                   # cache the frame features here (keyed by a content hash)
    # source=video_features: the MSR-VTT-style layout of interp_ray/data/video_features.py
    root: str | None = None
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "val": "validate", "test": "test"})


class SemanticJobConfig(Section):
    data: VideoDataSection = Field(default_factory=VideoDataSection)
    topics: TopicConfig = Field(default_factory=TopicConfig)
    explainer: SemanticConfig = Field(default_factory=SemanticConfig)
    train: SemanticTrainConfig = Field(default_factory=SemanticTrainConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    output: str = "outputs/semantic"


# --- data ----------------------------------------------------------------------------------------------------------

def load_items(data: VideoDataSection, role: str) -> VideoItems:
    """The videos of split role ``role`` ("train", "val", "test")."""
    rows = data.rows.get(role)
    if data.source == "video_features":
        if not data.root:
            raise UserError("data.root must name the video-feature directory when data.source is video_features")
        if role not in data.splits:
            raise UserError(f"no split configured for {role!r}; data.splits: {data.splits}")
        return read_video_features(data.root, data.splits[role], frames=data.frames, limit=rows)
    split = {"train": "train", "val": "val", "test": "test"}.get(role)
    if split is None:
        raise UserError(f"unknown role {role!r}")
    n = rows if rows is not None else {"train": 2000, "val": 400, "test": 400}[split]
    cache = _cache_path(data, split, n)
    if cache is not None and cache.is_file():
        return read_items(cache)
    items = scene_clip_items(split, n, data.checkpoint, frames=data.frames, layer=data.layer, seed=data.seed,
                             size=data.size, sentences_per_clip=data.sentences_per_clip)
    if cache is not None:
        write_items(cache, items)
    return items


def _cache_path(data: VideoDataSection, split: str, n: int) -> Path | None:
    if not data.cache_dir:
        return None
    digest = read_checkpoint(data.checkpoint, kind="classifier").digest
    ident = {"v": CACHE_VERSION, "checkpoint": digest, "layer": data.layer, "frames": data.frames, "seed": data.seed,
             "size": data.size, "k": data.sentences_per_clip, "split": split, "n": n}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return Path(data.cache_dir) / f"clips-{split}-{key}.npz"


def write_items(path: Path, items: VideoItems) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    k = max(len(s) for s in items.sentences)
    sentences = np.array([s + [""] * (k - len(s)) for s in items.sentences], dtype=str)
    arrays = {"ids": items.ids, "features": items.features, "mask": items.mask, "labels": items.labels,
              "sentences": sentences, "info": np.array(json.dumps(items.info))}
    if items.attributes is not None:
        arrays["attributes"] = items.attributes
    tmp = path.with_name(f".{path.name}.tmp-{time.time_ns()}.npz")
    np.savez(tmp, **arrays)
    tmp.rename(path)


def read_items(path: Path) -> VideoItems:
    with np.load(path, allow_pickle=False) as z:
        return VideoItems(z["ids"], z["features"], z["mask"], z["labels"],
                          [[s for s in row if s] for row in z["sentences"].tolist()],
                          z["attributes"] if "attributes" in z.files else None, json.loads(str(z["info"])))


def label_config(cfg: SemanticJobConfig) -> LabelConfig:
    """``labels.concepts: [attributes]`` expands to the scenes' attribute words."""
    concepts = cfg.labels.concepts
    if concepts == [ATTRIBUTE_CONCEPTS]:
        from interp_ray.data.scenes import ATTRIBUTE_VOCAB

        return cfg.labels.model_copy(update={"concepts": list(ATTRIBUTE_VOCAB)})
    return cfg.labels


# --- the Ray Train worker ------------------------------------------------------------------------------------------

def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray Train worker: the captioner's epochs, with DDP over the (video, sentence) pairs."""
    import ray
    import ray.train.torch

    from interp_ray.training import seed_everything

    cfg = SemanticJobConfig.model_validate(config["job"])
    rank, world = rank_and_world()
    seed_everything(cfg.train.seed)
    explainer = SemanticExplainer.load(config["init"])
    data = ray.get(config["data"])
    device = ray.train.torch.get_device()
    captioner = explainer.model.to(device)
    start = resume()
    if start.restored and start.state["vocab_digest"] != explainer.vocab.digest:
        raise UserError("vocabulary mismatch: the run's checkpoint was trained with another vocabulary; use a "
                        "new run.name")
    history = start.history
    model = ray.train.torch.prepare_model(captioner)
    trainer = SemanticTrainer(captioner, data["train"], data["val"], cfg.train, model=model, rank=rank, world=world,
                              device=device)
    if start.restored:
        trainer.load_state_dict(start.state["trainer"])
    for epoch in epochs(start, cfg.train.epochs, fail_at=cfg.train.fail_at_epoch, rank=rank):
        t0 = time.perf_counter()
        row = trainer.run_epoch(epoch)
        row.update({"attempt": start.attempt, "epoch_s": time.perf_counter() - t0, "world_size": world})
        history.append(row)
        report_epoch(row, history, checkpoint=rank == 0 and cfg.run.checkpoint_due(epoch, cfg.train.epochs),
                     state=lambda: {"trainer": trainer.state_dict(), "epoch": epoch,
                                    "vocab_digest": explainer.vocab.digest},
                     save_model=lambda d: _save_best(explainer, trainer, history, d / MODEL_DIR))
    return {"history": history}


def _save_best(explainer: SemanticExplainer, trainer: SemanticTrainer, history: list[dict[str, Any]],
               path: Path) -> None:
    with weights_swapped(explainer.model, trainer.best_state):
        explainer.history = list(history)
        explainer.save(str(path))


# --- the driver ----------------------------------------------------------------------------------------------------

def run_name(cfg: SemanticJobConfig) -> str:
    return cfg.run.name or f"semantic-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1000:03d}"


def new_explainer(cfg: SemanticJobConfig, train_items: VideoItems) -> SemanticExplainer:
    """Topics fitted on the training captions, the vocabulary, and a seeded initial captioner."""
    topic_model, _ = fit_topics(train_items.sentences, cfg.topics)
    explainer = SemanticExplainer(cfg.explainer).setup(train_items, topic_model, seed=cfg.train.seed)
    explainer.info = {"data": cfg.data.model_dump(), "topics": cfg.topics.model_dump()}
    return explainer


def prepare(cfg: SemanticJobConfig, items: dict[str, VideoItems], init_path: str) -> SemanticExplainer:
    """The run's starting point: reused from ``init_path`` when a resumed run already wrote it."""
    try:
        explainer = SemanticExplainer.load(init_path)
        if explainer.config != cfg.explainer:
            raise UserError(f"{init_path} was made with another explainer config; use a new run.name")
        log.info("reusing the topics, vocabulary and initial weights of %s", init_path)
        return explainer
    except UserError as e:
        if "no checkpoint at" not in str(e) and "cannot read checkpoint" not in str(e):
            raise
    explainer = new_explainer(cfg, items["train"])
    explainer.save(init_path)
    return explainer


def finish(cfg: SemanticJobConfig, explainer: SemanticExplainer, train_items: VideoItems) -> SemanticExplainer:
    """Label the neurons of the trained captioner on the training videos and write it to ``output``."""
    explainer.label(train_items, cfg=label_config(cfg))
    explainer.save(cfg.output)
    return explainer


def train(cfg: SemanticJobConfig, items: dict[str, VideoItems] | None = None) -> dict[str, Any]:
    """Fit on Ray Train, export the best epoch to ``cfg.output`` with its neuron labels."""
    import ray

    items = items or {role: load_items(cfg.data, role) for role in ("train", "val")}
    name = run_name(cfg)
    init_path = run_path(cfg.run, name, INIT_DIR)
    explainer = prepare(cfg, items, init_path)
    data = {"train": explainer.caption_data(items["train"]), "val": explainer.caption_data(items["val"])}
    loop_config = {"job": cfg.model_dump(), "init": init_path, "data": ray.put(data)}
    result = make_trainer(train_func, loop_config, name=name, scaling=cfg.scaling, run=cfg.run,
                          use_gpu=resolve_use_gpu(cfg.scaling.use_gpu)).fit()
    with final_checkpoint(result) as (d, history):
        trained = SemanticExplainer.load(str(d / MODEL_DIR))
    finish(cfg, trained, items["train"])
    return {"history": history, "checkpoint": str(cfg.output), "run_path": result.path, "init": init_path,
            "best_epoch": min(history, key=lambda h: h["val_nll"])["epoch"],
            "worker_history": worker_history(result)}


def train_local(cfg: SemanticJobConfig, items: dict[str, VideoItems] | None = None) -> dict[str, Any]:
    """The same training in this process, without Ray (same ``SemanticTrainer``; for experiments and tests)."""
    items = items or {role: load_items(cfg.data, role) for role in ("train", "val")}
    explainer = new_explainer(cfg, items["train"])
    explainer.fit(items["train"], items["val"], settings=cfg.train,
                  on_epoch=lambda r: log.info("epoch %d: train %.3f val nll %.3f", r["epoch"], r["train_loss"],
                                              r["val_nll"]))
    finish(cfg, explainer, items["train"])
    return {"history": explainer.history, "checkpoint": str(cfg.output),
            "best_epoch": min(explainer.history, key=lambda h: h["val_nll"])["epoch"]}


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--local", action="store_true", help="train in this process, without Ray")
    args = p.parse_args(argv)
    cfg = load_config(SemanticJobConfig, args.config, args.overrides)
    if args.local:
        out = train_local(cfg)
    else:
        check_storage_paths(run__storage_path=cfg.run.storage_path)
        init_ray(args.address)
        out = train(cfg)
    best = min(out["history"], key=lambda h: h["val_nll"])
    labelled = SemanticExplainer.load(out["checkpoint"]).neurons
    confident = sum(n.confident for n in labelled)
    print(f"semantic captioner (λ={cfg.explainer.interp_weight}): best val NLL {best['val_nll']:.3f} at epoch "
          f"{best['epoch']} of {len(out['history'])}; {confident} of {len(labelled)} neurons confidently labelled; "
          f"checkpoint: {out['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main)
