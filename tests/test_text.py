"""The tokeniser, vocabulary and padding shared by preprocessing and prediction."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from sentiment_rnn.text import (
    OOV,
    PAD,
    START,
    Vocabulary,
    encode_texts,
    pad,
    tokenize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Great MOVIE", ["great", "movie"]),
        ("Good.<br /><br />Bad<br/>ugly<BR>end", ["good", "bad", "ugly", "end"]),
        (
            'Wow!!! (really), 10/10... -- a "must"; see?',
            ["wow", "really", "10", "10", "a", "must", "see"],
        ),
        (
            "Don't stop: it's the actors' fault, 'quoted'",
            ["don't", "stop", "it's", "the", "actors", "fault", "quoted"],
        ),
        ("snake_case_words", ["snake", "case", "words"]),
        ("Café naïve RÉSUMÉ", ["café", "naïve", "résumé"]),
        ("", []),
        ("  ...!?  <br />", []),
    ],
)
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_tokenize_keeps_no_html_fragments() -> None:
    tokens = tokenize("Fine.<br /><br />Really fine.")
    assert "br" not in tokens
    assert tokens == ["fine", "really", "fine"]


def _random_sequences(maxlen: int, rng: random.Random) -> list[list[int]]:
    """Empty, shorter, exactly maxlen and longer sequences, plus random lengths."""
    lengths = [0, 1, maxlen - 1, maxlen, maxlen + 1, 3 * maxlen, 0]
    lengths += [rng.randint(0, 2 * maxlen) for _ in range(40)]
    return [[rng.randint(1, 499) for _ in range(length)] for length in lengths]


@pytest.mark.parametrize("maxlen", [1, 2, 7, 200])
def test_pad_matches_keras_pad_sequences(maxlen: int) -> None:
    import keras

    sequences = _random_sequences(maxlen, random.Random(maxlen))
    ours = pad(sequences, maxlen)
    theirs = keras.utils.pad_sequences(sequences, maxlen=maxlen)
    assert ours.dtype == np.int32
    assert theirs.dtype == np.int32
    assert ours.shape == (len(sequences), maxlen)
    np.testing.assert_array_equal(ours, theirs)


def test_pad_front_pads_and_front_truncates() -> None:
    padded = pad([[5, 6], [1, 2, 3, 4, 5], [], [7, 8, 9]], maxlen=3)
    np.testing.assert_array_equal(padded, [[0, 5, 6], [3, 4, 5], [0, 0, 0], [7, 8, 9]])
    assert pad([], maxlen=4).shape == (0, 4)


def test_pad_accepts_numpy_rows() -> None:
    rows = [np.array([1, 2, 3, 4]), np.array([], dtype=np.int64)]
    np.testing.assert_array_equal(pad(rows, maxlen=3), [[2, 3, 4], [0, 0, 0]])


def _reviews(count: int, seed: int) -> list[list[str]]:
    """Tokenised reviews drawn from 60 words with skewed frequencies (so ranks differ)."""
    rng = random.Random(seed)
    words = [f"w{index:02d}" for index in range(60)]
    weights = [1.0 / (rank + 1) for rank in range(60)]
    return [rng.choices(words, weights, k=rng.randint(5, 40)) for _ in range(count)]


def test_vocabulary_reserved_indices_and_size() -> None:
    vocabulary = Vocabulary.build(_reviews(200, seed=1), num_words=20)
    indices = sorted(vocabulary.word_index.values())
    assert len(vocabulary.word_index) == 20 - 3
    assert indices == list(range(3, 20))
    assert (PAD, START, OOV) == (0, 1, 2)
    assert all(index < vocabulary.num_words for index in indices)
    encoded = vocabulary.encode(["w00", "never-seen", "w01"])
    assert encoded[0] == START
    assert encoded[2] == OOV
    assert PAD not in encoded


def test_vocabulary_ranks_by_frequency_then_alphabetically() -> None:
    reviews = [["zebra", "apple", "mango"], ["mango", "zebra", "kiwi"], ["zebra"]]
    # zebra 3, mango 2, then a tie at 1 between apple and kiwi: alphabetical order decides.
    vocabulary = Vocabulary.build(reviews, num_words=3 + 4)
    assert vocabulary.word_index == {"zebra": 3, "mango": 4, "apple": 5, "kiwi": 6}
    assert Vocabulary.build(reviews, num_words=3 + 3).word_index == {
        "zebra": 3,
        "mango": 4,
        "apple": 5,
    }


def test_vocabulary_does_not_depend_on_review_order() -> None:
    reviews = _reviews(300, seed=2)
    shuffled = reviews[:]
    random.Random(3).shuffle(shuffled)
    assert Vocabulary.build(reviews, 30) == Vocabulary.build(shuffled, 30)


def test_vocabulary_smaller_than_num_words_keeps_every_word() -> None:
    vocabulary = Vocabulary.build([["a", "b"], ["b"]], num_words=500)
    assert vocabulary.word_index == {"b": 3, "a": 4}
    assert vocabulary.num_words == 500


def test_vocabulary_json_round_trip(tmp_path: Path) -> None:
    vocabulary = Vocabulary.build(_reviews(100, seed=4), num_words=25)
    path = tmp_path / "vocabulary.json"
    path.write_text(vocabulary.to_json(), encoding="utf-8")
    loaded = Vocabulary.load(path)
    assert loaded == vocabulary
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["reserved"] == {"padding": 0, "start": 1, "out_of_vocabulary": 2}
    assert payload["num_words"] == 25


def test_encode_texts_is_tokenize_encode_pad() -> None:
    vocabulary = Vocabulary.build([tokenize("good good movie"), tokenize("bad movie")], 6)
    assert vocabulary.word_index == {"good": 3, "movie": 4, "bad": 5}
    encoded = encode_texts(["Good movie, bad acting!", "", "MOVIE<br />movie"], vocabulary, 6)
    assert encoded.dtype == np.int32
    np.testing.assert_array_equal(
        encoded, [[0, START, 3, 4, 5, OOV], [0, 0, 0, 0, 0, START], [0, 0, 0, START, 4, 4]]
    )
    # Truncation drops the front, the start index first.
    np.testing.assert_array_equal(
        encode_texts(["Good movie, bad acting!"], vocabulary, 3), [[4, 5, OOV]]
    )
