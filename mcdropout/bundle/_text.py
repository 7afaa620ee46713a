"""Text in: a bundle's tokenizer (``tokenizer.json``, the ``tokenizers`` library) turning strings into token ids.

A text bundle's manifest says ``"input": {"shape": [L], "text": {"tokenizer": "tokenizer.json", "pad_id": P}}``.
Every row is padded with ``P`` to the bundle's fixed length ``L`` (never to the longest row of a batch), so a
row's ids, and so its answer, depend only on the row: not on the rows sent with it. A row with more tokens
than ``L`` (or than the caller's ``max_tokens``) is refused, never cut. The tokenizer is a JSON file: reading
it runs no code and fetches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout.errors import BundleError, InputError

TOKENIZER = "tokenizer.json"
PROBE_TEXTS = ("a", "the probe row")  # the rows of a text bundle's probe prediction at load


@dataclass(frozen=True)
class TextInput:
    """A manifest's ``input.text``: the bundle takes strings, tokenised by its ``tokenizer.json``, padded with
    ``pad_id``."""

    pad_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": TOKENIZER, "pad_id": self.pad_id}

    @classmethod
    def from_dict(cls, value: Any, where: str = "input.text") -> TextInput:
        if not isinstance(value, dict):
            raise BundleError(f"field '{where}': expected an object, got {type(value).__name__}")
        unknown = sorted(set(value) - {"tokenizer", "pad_id"})
        if unknown:
            raise BundleError(f"field '{where}.{unknown[0]}': unknown; expected tokenizer and pad_id")
        if value.get("tokenizer", TOKENIZER) != TOKENIZER:
            raise BundleError(f"field '{where}.tokenizer': must be {TOKENIZER!r} (the bundle's own file), got"
                              f" {value.get('tokenizer')!r}")
        pad = value.get("pad_id")
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise BundleError(f"field '{where}.pad_id': expected a token id (an int >= 0), got {pad!r}")
        return cls(pad_id=pad)


class TextError(InputError):
    """A text row that cannot be encoded: ``row`` (numbered from 0) and ``problem`` say which and why."""

    def __init__(self, row: int, problem: str) -> None:
        self.row, self.problem = row, problem
        super().__init__(f"row {row}: {problem}")


def is_text(rows: Any) -> bool:
    """Whether ``rows`` are strings (a list, tuple or object array of them), not numbers."""
    if isinstance(rows, np.ndarray):
        return rows.dtype == object or rows.dtype.kind in "US"
    return isinstance(rows, (list, tuple)) and bool(rows) and isinstance(rows[0], str)


class TextEncoder:
    """Strings to token ids of shape (rows, ``length``), int64, padded with ``pad_id``."""

    def __init__(self, tokenizer: Any, length: int, pad_id: int) -> None:
        tokenizer.no_padding()  # this copy counts a row's own tokens; the padding is this class's
        tokenizer.no_truncation()  # a row too long is refused, never silently cut
        self.tokenizer, self.length, self.pad_id = tokenizer, length, pad_id
        self.vocabulary = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def load(cls, file: Path, length: int, text: TextInput) -> TextEncoder:
        """The tokenizer ``file`` (a bundle's ``tokenizer.json``, checked as a regular file of its folder); a
        :class:`BundleError` names the file and the problem."""
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BundleError(f"{file}: a text bundle needs the tokenizers library: pip install"
                              " 'mcdropout[hf]'") from None
        try:
            tokenizer = Tokenizer.from_str(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError) as error:
            raise BundleError(f"{file}: cannot be read as UTF-8 text ({type(error).__name__})") from None
        except Exception as error:  # noqa: BLE001 - the tokenizers library's errors are plain Exceptions
            raise BundleError(f"{file}: not a tokenizers tokenizer.json ({str(error)[:200]})") from None
        encoder = cls(tokenizer, length, text.pad_id)
        if text.pad_id >= encoder.vocabulary:
            raise BundleError(f"{file.parent / 'manifest.json'}: field 'input.text.pad_id': {text.pad_id} is not a"
                              f" token of {TOKENIZER} ({encoder.vocabulary} tokens)")
        return encoder

    def encode(self, texts: Sequence[Any], max_tokens: int | None = None, max_tokens_name: str = "max_tokens"
               ) -> np.ndarray:
        """Token ids (rows, length); :class:`TextError` names the first row that is not a non-empty string or
        has more tokens than ``length`` (or ``max_tokens``, where lower; named ``max_tokens_name``)."""
        if len(texts) == 0:
            raise InputError("inputs are empty: got 0 rows")
        limit = self.length if max_tokens is None else min(self.length, max_tokens)
        ids = np.full((len(texts), self.length), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TextError(row, f"expected a string, got {type(text).__name__}")
            if not text.strip():
                raise TextError(row, "is empty (or only white space); send some text")
            tokens = self.tokenizer.encode(text).ids
            if not tokens:
                raise TextError(row, "gives no tokens (the tokenizer knows none of its characters)")
            if len(tokens) > limit:
                which = "the model's length" if limit == self.length else max_tokens_name
                raise TextError(row, f"{len(tokens)} tokens is over the limit of {limit} ({which}); shorten it")
            ids[row, :len(tokens)] = tokens
        return ids

    def check_ids(self, rows: Any) -> np.ndarray:
        """Rows given as token ids instead of strings: integers in the vocabulary, ``length`` per row
        (InputError otherwise: a float row would reach the embedding as an index)."""
        ids = rows.detach().cpu().numpy() if hasattr(rows, "detach") else np.asarray(rows)
        if ids.dtype.kind not in "iu":
            raise InputError(f"a text model takes strings, or token ids as integers; got rows of dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] != self.length:
            raise InputError(f"token ids must have shape (rows, {self.length}) (padded with {self.pad_id}), got"
                             f" {ids.shape}")
        outside = np.flatnonzero(((ids < 0) | (ids >= self.vocabulary)).any(axis=1))
        if len(outside):
            raise TextError(int(outside[0]), f"holds token ids outside the vocabulary [0, {self.vocabulary})")
        return ids.astype(np.int64, copy=False)

    def probe_rows(self) -> np.ndarray:
        """Two short rows for the probe prediction at load."""
        return self.encode(PROBE_TEXTS)
