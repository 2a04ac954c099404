"""Sentences as token ids: the tokeniser, the vocabulary, and reading sentence files safely.

Tokenisation is deliberately simple and fully reproducible: lower-case, then words (letters/digits, with an inner
apostrophe or hyphen) and single punctuation marks as separate tokens. ``detokenize`` glues punctuation back onto the
previous word, so ``detokenize(tokenize(s)) == s`` for the normal lower-case sentences of scenes and CUB. The
vocabulary (specials + words, in a fixed order) is saved as JSON beside an explainer's weights and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from interp_ray.errors import UserError

TOKENIZER_VERSION = 1
TOKEN_PATTERN = r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_NO_SPACE_BEFORE = set(".,;:!?)'%")
_NO_SPACE_AFTER = set("(")

START, END, PAD, UNK = "<start>", "<end>", "<pad>", "<unk>"
SPECIALS = (START, END, PAD, UNK)  # START has id 0, as in the paper's code
# Control characters other than tab/newline/CR mean a binary file, not text.
_NON_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def tokenize(sentence: str) -> list[str]:
    """Lower-cased word and punctuation tokens: ``"A red, striped circle."`` → a red , striped circle ."""
    return _TOKEN_RE.findall(str(sentence).lower())


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens into a sentence, attaching punctuation to the previous word."""
    out = ""
    for tok in tokens:
        if not out or tok in _NO_SPACE_BEFORE or out[-1] in _NO_SPACE_AFTER:
            out += tok
        else:
            out += " " + tok
    return out


@dataclass(frozen=True)
class Vocabulary:
    """Token ↔ id. ``tokens[0:4]`` are the specials ``<start> <end> <pad> <unk>``; words follow by frequency."""

    tokens: tuple[str, ...]

    def __post_init__(self):
        if tuple(self.tokens[:len(SPECIALS)]) != SPECIALS:
            raise UserError(f"vocabulary must start with {', '.join(SPECIALS)}; got {list(self.tokens[:4])}")
        if len(set(self.tokens)) != len(self.tokens):
            raise UserError("vocabulary lists a token twice")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    # ids of the specials
    start = property(lambda self: 0)
    end = property(lambda self: 1)
    pad = property(lambda self: 2)
    unk = property(lambda self: 3)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    @classmethod
    def build(cls, sentences: Iterable[str], *, min_count: int = 1) -> "Vocabulary":
        """Every token seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(t for s in sentences for t in tokenize(s))
        if not counts:
            raise UserError("cannot build a vocabulary: the training sentences hold no words")
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(words))

    def encode(self, sentence: str) -> list[int]:
        """Token ids of ``sentence`` (no start/end); unknown words become ``<unk>``."""
        return [self._index.get(t, self.unk) for t in tokenize(sentence)]

    def decode(self, ids: Iterable[int]) -> str:
        """A sentence from ids, stopping at ``<end>`` and skipping other specials."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i >= len(SPECIALS):
                words.append(self.tokens[i])
        return detokenize(words)

    def unknown_words(self, sentences: Iterable[str]) -> Counter:
        return Counter(t for s in sentences for t in tokenize(s) if t not in self._index)

    def check_covers(self, sentences: Sequence[str], *, max_unknown: float = 0.01, source: str = "the data") -> None:
        """Fail clearly when ``sentences`` use many words this vocabulary lacks (a checkpoint trained on other text)."""
        total = sum(len(tokenize(s)) for s in sentences)
        unknown = self.unknown_words(sentences)
        share = sum(unknown.values()) / max(total, 1)
        if share > max_unknown:
            examples = ", ".join(repr(w) for w, _ in unknown.most_common(5))
            raise UserError(f"vocabulary mismatch: {share:.1%} of the words of {source} are not in the checkpoint's "
                            f"vocabulary of {len(self)} tokens (e.g. {examples}); the explainer was trained on "
                            "different sentences — retrain it on this data")

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"tokenizer": {"version": TOKENIZER_VERSION, "pattern": TOKEN_PATTERN, "lowercase": True},
                           "tokens": list(self.tokens)}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "vocabulary") -> "Vocabulary":
        try:
            raw = json.loads(text)
            tokens, tok = raw["tokens"], raw["tokenizer"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{source}: not a vocabulary file (expected JSON with 'tokens' and 'tokenizer')") from None
        if tok.get("version") != TOKENIZER_VERSION or tok.get("pattern") != TOKEN_PATTERN:
            raise UserError(f"{source}: written by tokenizer version {tok.get('version')!r}; this code has "
                            f"version {TOKENIZER_VERSION}: token ids would not match")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise UserError(f"{source}: 'tokens' must be a list of strings")
        return cls(tuple(tokens))


def check_text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text, or a UserError saying why it is not a text file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    bad = _NON_TEXT.search(text)
    if bad:
        raise UserError(f"{source}: not a text file (control byte {ord(bad.group()):#04x} at offset {bad.start()})")
    return text


def read_sentence_file(path: str | Path) -> list[str]:
    """One sentence a line (blank lines kept as ""), from a UTF-8 text file; missing, empty or binary → UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"sentence file {p} does not exist")
    text = check_text(p.read_bytes(), str(p))
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not any(lines):
        raise UserError(f"{p}: no sentences (the file is empty; expected one sentence a line)")
    return lines
