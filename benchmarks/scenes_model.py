"""The trained scenes CNN the saliency benchmarks explain: trained once in-process, saved, reused.

    python -m benchmarks.scenes_model [--path /tmp/interp-ray-scenes-cnn] [--epochs 12]
    python -m benchmarks.scenes_model --path /tmp/interp-ray-scenes-cnn-two --two-object-rows 3000

The recipe is configs/scenes.yaml (width 16, 12 epochs, AdamW lr 0.003, wd 1e-4, cosine, batch 64), run with the
plain helpers of ``interp_ray.training`` (no Ray), so the benchmarks need nothing but this repository.

``--two-object-rows N`` adds N two-object training scenes whose target is ½ for each object's class (soft-target
cross-entropy): a classifier that, like an ImageNet model on a cat-and-dog photo, gives both objects' classes real
probability. The one-object model gives the second object's class ~1e-3, which leaves class-discriminative saliency
nothing to find (docs/saliency.md, two-object scenes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_PATH = "/tmp/interp-ray-scenes-cnn"


def train_scenes_cnn(path: str = DEFAULT_PATH, *, epochs: int = 12, lr: float = 0.003, weight_decay: float = 1e-4,
                     batch_size: int = 64, seed: int = 0, rows: int | None = None) -> str:
    """Train the scenes CNN on the generated train split and save it as an interp-ray classifier checkpoint."""
    from interp_ray.checkpoint import save_classifier
    from interp_ray.data import load_dataset
    from interp_ray.data.base import ArrayDataset
    from interp_ray.models import build_model
    from interp_ray.training import distributed_sampler, evaluate, make_optimizer, seed_everything, train_epoch

    train, val = load_dataset("scenes", "train", n=rows), load_dataset("scenes", "val")
    # Generate once and keep the pixels as uint8: re-drawing every row each epoch would double the epoch time.
    rows_all = train.get_batch(np.arange(len(train)))
    cached = ArrayDataset("scenes", "train", (rows_all["image"] * 255).round().astype(np.uint8), rows_all["label"],
                          list(train.class_names))
    seed_everything(seed)
    options = {"num_classes": train.num_classes, "in_channels": 3, "image_size": train.image_shape[1]}
    model = build_model("scenes_cnn", **options)
    opt, sched = make_optimizer(model, lr=lr, weight_decay=weight_decay, schedule="cosine", epochs=epochs)
    sampler = distributed_sampler(cached, world_size=1, rank=0, shuffle=True, seed=seed)
    loader, device = cached.loader(batch_size, sampler=sampler), torch.device("cpu")
    metrics: dict = {}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        tr = train_epoch(model, loader, opt, device)
        sched.step()
        metrics = evaluate(model, val.loader(256), device)
        print(f"epoch {epoch}: train_acc {tr['accuracy']:.3f} val_acc {metrics['accuracy']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    save_classifier(path, model, model_name="scenes_cnn", model_options=options, class_names=list(train.class_names),
                    data={"name": "scenes", "options": {"size": 64, "seed": 0}},
                    metrics={"val_accuracy": metrics["accuracy"], "epochs": epochs})
    return path


def train_with_two_object_scenes(path: str, *, two_object_rows: int, epochs: int = 12, lr: float = 0.003,
                                 weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0) -> str:
    """The same recipe on the one-object train split plus ``two_object_rows`` two-object scenes (seed 1, so none
    of the evaluation's two-object test scenes is seen), with soft targets."""
    import torch.nn.functional as F

    from interp_ray.checkpoint import save_classifier
    from interp_ray.data import load_dataset
    from interp_ray.models import build_model
    from interp_ray.training import evaluate, make_optimizer, seed_everything

    one = load_dataset("scenes", "train")
    two = load_dataset("scenes", "train", n=two_object_rows, seed=1, two_objects=True)
    a, b = one.get_batch(np.arange(len(one))), two.get_batch(np.arange(len(two)))
    k = one.num_classes
    soft = np.concatenate([np.eye(k, dtype=np.float32)[a["label"]],
                           0.5 * np.eye(k, dtype=np.float32)[b["box_labels"][:, 0]]
                           + 0.5 * np.eye(k, dtype=np.float32)[b["box_labels"][:, 1]]])
    images = torch.from_numpy((np.concatenate([a["image"], b["image"]]) * 255).round().astype(np.uint8))
    targets = torch.from_numpy(soft)
    seed_everything(seed)
    options = {"num_classes": k, "in_channels": 3, "image_size": one.image_shape[1]}
    model = build_model("scenes_cnn", **options)
    opt, sched = make_optimizer(model, lr=lr, weight_decay=weight_decay, schedule="cosine", epochs=epochs)
    g = torch.Generator().manual_seed(seed)
    val = load_dataset("scenes", "val")
    metrics: dict = {}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(images), generator=g).split(batch_size):
            loss = F.cross_entropy(model(images[idx].float() / 255.0), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        metrics = evaluate(model, val.loader(256), torch.device("cpu"))
        print(f"epoch {epoch}: val_acc {metrics['accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    save_classifier(path, model, model_name="scenes_cnn", model_options=options, class_names=list(one.class_names),
                    data={"name": "scenes", "options": {"size": 64, "seed": 0}},
                    metrics={"val_accuracy": metrics["accuracy"], "epochs": epochs,
                             "two_object_rows": two_object_rows})
    return path


def load_or_train(path: str = DEFAULT_PATH):
    """The saved scenes CNN (trained first if ``path`` holds no checkpoint), in eval mode on the CPU."""
    from interp_ray.checkpoint import load_classifier

    if not (Path(path) / "weights.safetensors").is_file():
        train_scenes_cnn(path)
    return load_classifier(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=DEFAULT_PATH)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--two-object-rows", type=int, default=0, help="add two-object scenes with ½/½ soft targets")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.two_object_rows:
        train_with_two_object_scenes(args.path, two_object_rows=args.two_object_rows, epochs=args.epochs)
    else:
        train_scenes_cnn(args.path, epochs=args.epochs)


if __name__ == "__main__":
    main()
