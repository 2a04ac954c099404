"""Captions of a user's images: a JSON-lines file beside an image folder, or a text column of a Parquet dataset.

The captioning explainers (InterpNET, Dong et al.) learn from reference sentences that travel in a dataset's rows as
the ``sentences`` column (N × K strings, "" where an image has fewer than K), copied into the activation store
beside the activations (``source.keep: [sentences]``), so a store row's captions are its own image's by
construction: they are joined to the rows by row id when the dataset is loaded, never by position in a file.

``captions.jsonl`` (an image folder's root, or the file named by the loader's ``captions`` option), one JSON object
a line::

    {"image": "train/red_circle/0001.png", "captions": ["a red circle", "a small red round shape"]}
    {"image": "train/red_circle/0002.png", "caption": "a red circle on grey"}

``image`` is the image's path relative to the folder's root, with ``/`` separators (the row's id); ``captions`` a
list of strings or ``caption`` one string (exactly one of the two). An image may have several lines: its captions
add up. Blank lines are skipped. Every image of the split loaded must have at least one caption, every caption must
hold a word, and every line must name an image that is in the folder (in any split); anything else is one
``UserError`` naming the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from interp_ray.errors import UserError
from interp_ray.text import check_text, tokenize

CAPTIONS_FILE = "captions.jsonl"
CAPTIONS_COLUMN = "sentences"   # the row column every captioning explainer reads (scenes and CUB write it too)
LINE_KEYS = ("image", "caption", "captions")
DOC = "docs/your_model.md#captions"


@dataclass
class CaptionsFile:
    """A parsed captions file: image → its captions, and the line each image was first named on."""

    source: str                      # the file, as messages name it
    captions: dict[str, list[str]]
    lines: dict[str, int]
    digest: str                      # of the file's bytes: a store made from other captions is another store

    def table(self, ids: Sequence[str]) -> np.ndarray:
        """``ids``' captions as N × K strings (K: the most any of them has; "" pads), in ``ids``' order."""
        missing = [i for i in ids if i not in self.captions]
        if missing:
            more = f" (and {len(missing) - 1} more image(s) of this split)" if len(missing) > 1 else ""
            raise UserError(f"{self.source}: image {missing[0]} has no caption{more}; add a line "
                            f'{{"image": "{missing[0]}", "captions": ["…"]}} ({DOC})')
        return caption_array([self.captions[i] for i in ids])

    def check_images(self, exists: Callable[[str], bool]) -> None:
        """Every image the file names is in the folder (any split): a typo never leaves an image uncaptioned
        silently while its captions go nowhere."""
        for image, line in self.lines.items():
            if not exists(image):
                raise UserError(f"{self.source}:{line}: image {image!r} is not in the image folder (paths are "
                                f"relative to the folder's root, with / separators)")


class Captioned:
    """What a loader whose captions are read at load time adds to its dataset (before ``ImageDataset`` in the bases):
    ``captions`` (N × K strings, or None) travel in its rows as ``sentences``, and ``extra_columns`` says so without
    reading a row."""

    captions: np.ndarray | None

    def with_captions(self, rows: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
        if self.captions is not None:
            rows[CAPTIONS_COLUMN] = self.captions[idx]
        return rows

    def extra_columns(self) -> list[str]:
        return [CAPTIONS_COLUMN] if self.captions is not None else []


def caption_array(rows: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-row caption lists as one N × K string array, "" padding the rows with fewer than K."""
    width = max((len(r) for r in rows), default=1)
    out = np.full((len(rows), width), "", dtype=object)
    for i, r in enumerate(rows):
        out[i, :len(r)] = list(r)
    return out.astype(str)


def check_caption(text: Any, where: str) -> str:
    """One caption, stripped; not a string, or without a word → UserError naming ``where``."""
    if not isinstance(text, str):
        raise UserError(f"{where}: a caption must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise UserError(f"{where}: the caption is empty")
    if not any(t[0].isalnum() for t in tokenize(text)):
        raise UserError(f"{where}: the caption {text[:40]!r} has no word")
    return text


def image_key(value: Any, where: str) -> str:
    """An ``image`` field as the row id it must equal: a relative POSIX path, normalised (``./a/b.png`` → a/b.png)."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: 'image' must be the image's path relative to the folder's root")
    path = value.strip().replace("\\", "/")
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../"):
        raise UserError(f"{where}: image {value!r} must be relative to the folder's root, inside it")
    return norm


def parse_captions(data: bytes, source: str) -> CaptionsFile:
    """A captions JSON-lines file's bytes (module docstring); anything malformed is one line naming the line."""
    text = check_text(data, source)
    captions: dict[str, list[str]] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{source}:{number}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc.msg}); expected one object a line: "
                            f'{{"image": "…", "captions": ["…"]}}') from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object with 'image' and 'captions', got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(LINE_KEYS))
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; a line has image and caption or "
                            f"captions")
        if "image" not in obj:
            raise UserError(f"{where}: no 'image' field (the image's path relative to the folder's root)")
        image = image_key(obj["image"], where)
        if ("caption" in obj) == ("captions" in obj):
            raise UserError(f"{where}: give exactly one of 'caption' (a string) or 'captions' (a list of strings)")
        if "caption" in obj:
            found = [check_caption(obj["caption"], f"{where}: caption")]
        else:
            if not isinstance(obj["captions"], list) or not obj["captions"]:
                raise UserError(f"{where}: 'captions' must be a non-empty list of strings")
            found = [check_caption(c, f"{where}: captions[{i}]") for i, c in enumerate(obj["captions"])]
        captions.setdefault(image, []).extend(found)
        lines.setdefault(image, number)
    if not captions:
        raise UserError(f"{source}: no captions (expected one JSON object a line: "
                        f'{{"image": "…", "captions": ["…"]}}; {DOC})')
    return CaptionsFile(source, captions, lines, hashlib.sha256(data).hexdigest()[:16])


def column_captions(values: Iterable[Any], where: Callable[[int], str]) -> list[list[str]]:
    """A Parquet caption column's values (a string or a list of strings per row) as per-row caption lists; a null,
    an empty list or an empty caption is a UserError naming the row (``where(row)``)."""
    rows = []
    for r, value in enumerate(values):
        if value is None:
            raise UserError(f"{where(r)}: the caption is null")
        items = [value] if isinstance(value, str) else list(value)
        if not items:
            raise UserError(f"{where(r)}: the caption list is empty")
        rows.append([check_caption(c, where(r) if isinstance(value, str) else f"{where(r)}[{i}]")
                     for i, c in enumerate(items)])
    return rows


def is_caption_type(kind: Any) -> bool:
    """A string column, or a list of strings (any Arrow list flavour)."""
    import pyarrow as pa

    def text(t: Any) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or \
            (pa.types.is_dictionary(t) and text(t.value_type))

    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return text(kind.value_type)
    return text(kind)


def captions_hint(method: str, dataset: str) -> str:
    """The one line a captioning method's job prints when its dataset has no captions."""
    fix = {"image_folder": f"put {CAPTIONS_FILE} beside the images, at the folder's root ({DOC}), or name it with "
                           f"source.data.options.captions",
           "parquet": f"set source.data.options.captions_column to the Parquet column holding the captions ({DOC})"}
    return (f"{method} needs captions, and dataset {dataset!r} has none: "
            + fix.get(dataset, f"use an image_folder with {CAPTIONS_FILE} or a parquet dataset with "
                               f"captions_column ({DOC})"))
