"""Write the web page's bundled sample images (serving/web/samples/): a few test images of the project's own digits
and scenes data and of Fashion-MNIST, at the size each classifier takes, plus index.json (file, dataset, label,
C×H×W shape).

    python scripts/make_web_samples.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from interp_ray.data import load_dataset

OUT = Path(__file__).resolve().parents[1] / "serving" / "web" / "samples"
PICKS = {"digits": 3, "scenes": 3, "fashion_mnist": 3}   # Fashion-MNIST: Debian's dataset-fashion-mnist


def to_png(image: np.ndarray, path: Path) -> None:
    arr = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    arr = (arr * 255).round().astype(np.uint8)
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path, optimize=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    index = []
    for name, count in PICKS.items():
        ds = load_dataset(name, "test")
        batch = ds.get_batch(np.arange(64))
        seen: set[int] = set()
        for i, label in enumerate(batch["label"]):
            if int(label) in seen:
                continue
            seen.add(int(label))
            names = getattr(ds, "class_names", None)
            label_name = str(names[int(label)]) if names else str(int(label))
            file = f"{name}_{len(seen)}.png"
            to_png(batch["image"][i], OUT / file)
            index.append({"file": file, "dataset": name, "label": int(label), "label_name": label_name,
                          "shape": list(batch["image"][i].shape)})
            if len(seen) == count:
                break
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{len(index)} samples in {OUT}")


if __name__ == "__main__":
    main()
