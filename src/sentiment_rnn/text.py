"""Tokeniser, vocabulary and padding shared by preprocessing and prediction on raw text.

Nothing here imports TensorFlow, so the served model and the CLI stay fast to start. The encoding
follows Keras' IMDB dataset: index 0 pads, 1 starts every review, 2 stands for a word outside the
vocabulary, and the ``num_words - 3`` most frequent training words take 3, 4, ... by frequency, so
an Embedding's ``input_dim`` equals ``num_words``. Padding and truncation happen at the front, as
``keras.utils.pad_sequences`` does by default: a recurrent layer's last state then sees the end of
the review, not padding.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD, START, OOV = 0, 1, 2
FIRST_WORD_INDEX = 3

_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A word is a run of letters or digits, apostrophes kept inside ("don't"); the rest is punctuation.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Split a review into lower-case words, dropping HTML line breaks and punctuation.

    Args:
        text: One raw review.

    Returns:
        The words in order.
    """
    return _WORD.findall(_LINE_BREAK.sub(" ", text).lower())


@dataclass(frozen=True)
class Vocabulary:
    """The word-to-index map of the ``num_words`` most frequent training words.

    Attributes:
        num_words: Size of the index space, reserved indices included.
        word_index: Word to index, every index in ``[3, num_words)``.
    """

    num_words: int
    word_index: dict[str, int]

    @classmethod
    def build(cls, tokenized: Iterable[Sequence[str]], num_words: int) -> Vocabulary:
        """Count words over the training reviews and keep the most frequent.

        Ties are broken alphabetically so the vocabulary does not depend on review order.

        Args:
            tokenized: The training reviews, already tokenised.
            num_words: Index space size, the three reserved indices included.

        Returns:
            The vocabulary.
        """
        counts: Counter[str] = Counter()
        for tokens in tokenized:
            counts.update(tokens)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        kept = ranked[: max(num_words - FIRST_WORD_INDEX, 0)]
        return cls(
            num_words=num_words,
            word_index={word: FIRST_WORD_INDEX + rank for rank, (word, _) in enumerate(kept)},
        )

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Map words to indices, with the start index first and OOV for unknown words."""
        lookup = self.word_index.get
        return [START, *(lookup(token, OOV) for token in tokens)]

    def to_json(self) -> str:
        """Serialise, reserved indices spelled out for readers of the file."""
        return json.dumps(
            {
                "num_words": self.num_words,
                "reserved": {"padding": PAD, "start": START, "out_of_vocabulary": OOV},
                "word_index": self.word_index,
            },
            indent=1,
        )

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by :meth:`to_json`."""
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        return cls(num_words=int(payload["num_words"]), word_index=dict(payload["word_index"]))


def pad(sequences: Sequence[Sequence[int]], maxlen: int) -> np.ndarray:
    """Pad with zeros and truncate at the front to ``maxlen``, like Keras' defaults.

    Args:
        sequences: Encoded reviews of any lengths.
        maxlen: The common length.

    Returns:
        An ``int32`` array of shape ``(len(sequences), maxlen)``.
    """
    padded = np.zeros((len(sequences), maxlen), dtype=np.int32)
    for row, sequence in enumerate(sequences):
        if not len(sequence):
            continue
        kept = sequence[-maxlen:]
        padded[row, maxlen - len(kept) :] = kept
    return padded


def encode_texts(texts: Iterable[str], vocabulary: Vocabulary, maxlen: int) -> np.ndarray:
    """Tokenise, encode and pad raw reviews: the whole path from text to model input.

    Args:
        texts: Raw reviews.
        vocabulary: The training vocabulary.
        maxlen: The training sequence length.

    Returns:
        An ``int32`` array of shape ``(n, maxlen)``.
    """
    return pad([vocabulary.encode(tokenize(text)) for text in texts], maxlen)
