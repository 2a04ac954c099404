"""Scenes: the attribute and class tables, and the reference sentences written from them."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

GENERATOR_VERSION = 1  # bump when the pixels or sentences change, so content hashes and checkpoints change too

SPLITS = ("train", "val", "test")
DEFAULT_ROWS = {"train": 6000, "val": 1000, "test": 1000}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_SALT = 0x5CE7E5  # keeps these streams apart from other generators seeded with the same small integers
_MODE_ONE, _MODE_TWO, _MODE_CLIP_ONE, _MODE_CLIP_TWO = 0, 1, 2, 3
_ROW_STREAM, _LABEL_STREAM = 0, 1

MIN_SIZE = 32  # below this, stripes and dots are too small to read
MAX_SENTENCES = 10

# ---------------------------------------------------------------------------------------------------------------
# Attributes and classes
# ---------------------------------------------------------------------------------------------------------------

ATTRIBUTE_KINDS: tuple[str, ...] = ("shape", "colour", "pattern", "size")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow"),
    "pattern": ("solid", "striped", "dotted"),
    "size": ("small", "large"),
}
# Every attribute word → its kind. Words are unique across kinds, so a word alone says which kind it names.
ATTRIBUTE_VOCAB: dict[str, str] = {v: kind for kind, values in ATTRIBUTE_VALUES.items() for v in values}

# Class name → attribute values; the class index is the position in this table (keep the order stable).
# Designed so that pairs differ in exactly one kind (colour: 0-1, 3-5, 6-8; pattern: 0-2, 6-7, 9-11;
# size: 3-4, 9-10) and so that the discriminative set of every class is sufficient (see module docstring).
# One class a row: its name, then its value of each kind in ATTRIBUTE_KINDS order (columns two spaces apart).
_CLASS_TABLE = """
alder warbler   circle    red     striped  large
brook warbler   circle    blue    striped  large
cedar warbler   circle    red     dotted   large
dune finch      square    green   solid    small
elm finch       square    green   solid    large
fen finch       square    yellow  solid    small
gorse tern      triangle  yellow  striped  small
heath tern      triangle  yellow  dotted   small
iris tern       triangle  red     striped  small
juniper shrike  cross     blue    dotted   large
kelp shrike     cross     blue    dotted   small
larch shrike    cross     blue    solid    large
"""
CLASSES: dict[str, dict[str, str]] = {
    name: dict(zip(ATTRIBUTE_KINDS, values, strict=True))
    for name, *values in (re.split(r"\s{2,}", row) for row in _CLASS_TABLE.strip().splitlines())}
CLASS_NAMES: list[str] = list(CLASSES)
NUM_CLASSES = len(CLASS_NAMES)

# Plural shape nouns count as mentions of the shape; everything else must use the canonical word.
_MENTION_FORMS: dict[str, str] = {**{v: v for v in ATTRIBUTE_VOCAB},
                                  "circles": "circle", "squares": "square", "triangles": "triangle",
                                  "crosses": "cross"}


def class_attributes(class_index: int) -> dict[str, str]:
    """The attribute values of class ``class_index`` (a copy)."""
    return dict(CLASSES[CLASS_NAMES[class_index]])


def attribute_indices(class_index: int) -> np.ndarray:
    """int64 (4,): the index of each attribute value of the class within ``ATTRIBUTE_VALUES[kind]``."""
    attrs = CLASSES[CLASS_NAMES[class_index]]
    return np.array([ATTRIBUTE_VALUES[k].index(attrs[k]) for k in ATTRIBUTE_KINDS], dtype=np.int64)


def discriminative_kinds(class_index: int) -> list[str]:
    """Kinds (in ``ATTRIBUTE_KINDS`` order) whose value is discriminative for the class: shape, plus every kind in
    which some other class differs from this one and in nothing else."""
    mine = CLASSES[CLASS_NAMES[class_index]]
    kinds = {"shape"}
    for other_index, other in enumerate(CLASSES.values()):
        if other_index == class_index:
            continue
        differing = [k for k in ATTRIBUTE_KINDS if other[k] != mine[k]]
        if len(differing) == 1:
            kinds.add(differing[0])
    return [k for k in ATTRIBUTE_KINDS if k in kinds]


def discriminative_attributes(class_index: int) -> list[str]:
    """The attribute values any explanation of this class must name (see the module docstring for the definition)."""
    mine = CLASSES[CLASS_NAMES[class_index]]
    return [mine[k] for k in discriminative_kinds(class_index)]


def attribute_mentions(sentence: str) -> set[str]:
    """The attribute values (canonical words) that ``sentence`` names; whole words only, case-insensitive."""
    return {_MENTION_FORMS[t] for t in re.findall(r"[a-z]+", sentence.lower()) if t in _MENTION_FORMS}


# ---------------------------------------------------------------------------------------------------------------
# Reference sentences
# ---------------------------------------------------------------------------------------------------------------

# Placeholders: {A_name} "an alder warbler"; {shape}; {A_shape}; {adjs} "red striped"; {A_adjs} "a red striped";
# {A_adjs_shape} "a red striped circle"; {list} "red and striped". Every template names the shape and all adjectives.
_TEMPLATES: tuple[str, ...] = (
    "{A_adjs_shape}.",
    "this is {A_name} because it is {A_adjs_shape}.",
    "this {shape} is {list}.",
    "{A_name}: {A_shape} that is {list}.",
    "this is {A_name} because it has {A_adjs} body shaped like {A_shape}.",
    "the object is {A_shape} and it is {list}.",
    "{A_shape}, {list}, which marks it as {A_name}.",
    "an image of {A_adjs_shape}.",
    "the {adjs} {shape} in this picture is {A_name}.",
    "its {list} look and its {shape} outline make it {A_name}.",
)
assert len(_TEMPLATES) >= MAX_SENTENCES
_OPTIONAL_MENTION_P = 0.35  # chance that a sentence also names a true but non-discriminative attribute


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join_list(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _sentence(template: str, class_index: int, adjectives: list[str]) -> str:
    shape = CLASSES[CLASS_NAMES[class_index]]["shape"]
    adjs = " ".join(adjectives)
    return template.format(
        A_name=_with_article(CLASS_NAMES[class_index]), shape=shape, A_shape=_with_article(shape), adjs=adjs,
        A_adjs=_with_article(adjs), A_adjs_shape=_with_article(f"{adjs} {shape}"), list=_join_list(adjectives))


def make_sentences(class_index: int, rng: np.random.Generator, k: int) -> list[str]:
    """``k`` reference sentences for class ``class_index``, each from a different template.

    Every sentence names all discriminative attribute values; each true non-discriminative value is added with
    probability 0.35 (real descriptions mention more than the minimum); adjective order is random. No sentence names
    a value the class does not have.
    """
    attrs = CLASSES[CLASS_NAMES[class_index]]
    required = [attrs[kind] for kind in discriminative_kinds(class_index) if kind != "shape"]
    optional = [attrs[kind] for kind in ATTRIBUTE_KINDS if kind != "shape" and attrs[kind] not in required]
    sentences = []
    for t in rng.permutation(len(_TEMPLATES))[:k]:
        chosen = required + [v for v in optional if rng.random() < _OPTIONAL_MENTION_P]
        adjectives = [chosen[i] for i in rng.permutation(len(chosen))]
        sentences.append(_sentence(_TEMPLATES[t], class_index, adjectives))
    return sentences
