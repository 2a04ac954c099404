"""A tiny captioned dataset as a user would bring it: an image folder (3 classes of 64×64 PNG shapes, train and val
splits) with ``captions.jsonl`` at its root, and the same images as a Parquet file with a caption column.

Every caption names its image's colour and shape (the class), in one of a few phrasings, so a test can tell whether
each row's captions are its own (joined by row id) and whether a trained captioner uses the dataset's words. A few
words ("vivid", "blob") occur in no other fixture of the suite, so a vocabulary built from other captions (the
generated scenes') cannot pass for this one's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

# class directory → (colour word, shape word, RGB)
CLASSES = {"blue_triangle": ("blue", "triangle", (40, 60, 220)),
           "green_square": ("green", "square", (40, 200, 60)),
           "red_circle": ("red", "circle", (220, 40, 40))}
PHRASES = ("a {colour} {shape}", "a vivid {colour} {shape} blob", "the {shape} is {colour}")
SPLITS = {"train": 8, "val": 4}
SIZE = 64


def draw(shape: str, rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A 64×64 RGB image: a grey background with one filled shape of random size and place."""
    img = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8) + rng.integers(0, 12, (SIZE, SIZE, 3), dtype=np.uint8)
    r = int(rng.integers(10, 18))
    cy, cx = (int(v) for v in rng.integers(r + 2, SIZE - r - 2, 2))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if shape == "circle":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    else:  # a triangle pointing up
        inside = (yy <= cy + r) & (yy >= cy - r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    img[inside] = rgb
    return img


def captions_for(cls: str, index: int) -> list[str]:
    colour, shape, _ = CLASSES[cls]
    k = 1 + index % 3  # 1 to 3 captions an image: the store pads with ""
    return [PHRASES[(index + j) % len(PHRASES)].format(colour=colour, shape=shape) for j in range(k)]


def write_captioned_folder(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """The image folder with ``captions.jsonl``; returns image path (relative to ``root``) → captions."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    captions: dict[str, list[str]] = {}
    for split, per_class in SPLITS.items():
        for cls, (_, shape, rgb) in CLASSES.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rel = f"{split}/{cls}/{i:03d}.png"
                Image.fromarray(draw(shape, rgb, rng)).save(root / rel)
                captions[rel] = captions_for(cls, i)
    lines = []
    for n, (rel, caps) in enumerate(captions.items()):
        # both forms of a line: one string, or a list (an image's lines add up)
        if n % 2:
            lines.append(json.dumps({"image": rel, "captions": caps}))
        else:
            lines += [json.dumps({"image": rel, "caption": c}) for c in caps]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return captions


def write_parquet_copy(folder: Path, out: Path, captions: dict[str, list[str]], *, column: str = "text",
                       shuffle_seed: int = 1) -> None:
    """The folder's images as ``out/<split>.parquet`` (Hugging Face layout: image struct, class-name labels, an id
    column) with each row's captions in ``column`` (a list of strings). Rows are shuffled, so a loader that joined
    captions by position in another order would give rows another class's captions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(shuffle_seed)
    for split in SPLITS:
        rels = sorted(r for r in captions if r.startswith(f"{split}/"))
        rels = [rels[i] for i in rng.permutation(len(rels))]
        images = []
        for rel in rels:
            buf = io.BytesIO((folder / rel).read_bytes())
            images.append({"bytes": buf.getvalue(), "path": rel})
        table = pa.table({"image": images, "label": [r.split("/")[1] for r in rels], "id": rels,
                          column: [captions[r] for r in rels]})
        pq.write_table(table, out / f"{split}.parquet", row_group_size=10)


def caption_words(captions: dict[str, list[str]], split: str = "train") -> set[str]:
    """Every token of ``split``'s captions (the project's tokeniser)."""
    from interp_ray.text import tokenize

    return {t for rel, caps in captions.items() if rel.startswith(f"{split}/") for c in caps for t in tokenize(c)}
