"""Shared fixtures: small archives in the aclImdb layout, built by the tests themselves."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

POSITIVE_WORDS = ["great", "wonderful", "moving", "brilliant", "superb", "loved", "best"]
NEGATIVE_WORDS = ["awful", "boring", "dull", "worst", "terrible", "hated", "waste"]
FILLER = ["the", "film", "movie", "plot", "actors", "story", "was", "and", "a", "this", "it"]


def review_text(index: int, positive: bool) -> str:
    """A review whose sentiment words make the label learnable."""
    cues = POSITIVE_WORDS if positive else NEGATIVE_WORDS
    words = []
    for position in range(20 + index % 30):
        if position % 4 == 0:
            words.append(cues[(index + position) % len(cues)])
        else:
            words.append(FILLER[(index * 7 + position) % len(FILLER)])
    return " ".join(words).capitalize() + ".<br /><br />The End!"


def build_archive(path: Path, per_class: int = 20, extra_members: bool = True) -> Path:
    """Write a gzip tar in the aclImdb layout with ``per_class`` reviews per split and label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:

        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))

        if extra_members:
            add("aclImdb/README", b"Large Movie Review Dataset (test copy)\n")
            add("aclImdb/imdb.vocab", b"the\nfilm\n")
            add("aclImdb/train/urls_pos.txt", b"http://example.invalid\n")
        for split in ("train", "test"):
            for label in ("pos", "neg"):
                for number in range(per_class):
                    rating = 7 + number % 4 if label == "pos" else 1 + number % 4
                    text = review_text(number + (0 if split == "train" else 1000), label == "pos")
                    add(f"aclImdb/{split}/{label}/{number}_{rating}.txt", text.encode("utf-8"))
    return path


@pytest.fixture
def small_archive(tmp_path: Path) -> Path:
    """A 160-review archive (20 per split and label) with the extra files a real one has."""
    return build_archive(tmp_path / "archive" / "aclImdb_v1.tar.gz")
