"""Stage ``preprocess``: read, split, tokenise and encode the reviews.

Reads the reviews straight out of ``data/raw/aclImdb_v1.tar.gz`` (the fetch stage's output, never
unpacked) and the CSV files listed in ``data.extra``; splits the 25,000 training reviews into a
stratified, seeded train and validation part; builds the vocabulary on the training part only;
encodes and front-pads every review. Writes:

- ``data/processed/{train,validation,test}.npz``: ``x`` (int32, n x maxlen), ``y`` (int8 0/1),
  ``ids`` (str, such as ``train/pos/123_8``);
- ``data/processed/vocabulary.json``: :meth:`sentiment_rnn.text.Vocabulary.to_json`;
- ``data/processed/reviews.parquet``: id, rating, label, split, text, in the rows' order of the
  ``.npz`` files (train, then validation, then test);
- ``metrics/data.json``: reviews per split and label, lengths in tokens, out-of-vocabulary and
  truncation shares.

Run it with ``dvc repro preprocess`` or ``sentiment-rnn preprocess``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import DataParams, Params, PreprocessParams
from sentiment_rnn.text import OOV, Vocabulary, pad, tokenize

log = logging.getLogger(__name__)

COLUMNS = ["id", "rating", "label", "split", "text"]
LABELS = {"neg": 0, "pos": 1}
# Rating of a review that did not come from the archive (an extra CSV row has none).
NO_RATING = -1
VOCABULARY_FILE = "vocabulary.json"
REVIEWS_FILE = "reviews.parquet"
METRICS_FILE = paths.METRICS_DIR / "data.json"

# Only the last three parts count, so any top folder name (aclImdb/, ./, none) is accepted and
# README, imdb.vocab, urls_*.txt and train/unsup/ are skipped. Ratings run from 1 to 10.
_REVIEW_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d{1,2})\.txt$")


def _table(rows: list[tuple[str, int, int, str, str]]) -> pd.DataFrame:
    """A reviews table with compact, fixed column types, even when ``rows`` is empty."""
    reviews = pd.DataFrame(rows, columns=COLUMNS)
    return reviews.astype({"rating": np.int8, "label": np.int8})


def read_archive(archive: Path) -> pd.DataFrame:
    """Read the labelled reviews out of a gzip tar in the aclImdb layout, without unpacking it.

    Args:
        archive: The ``.tar.gz`` file.

    Returns:
        A table with columns id, rating, label, split ("train" or "test") and text, sorted by id.

    Raises:
        UserError: If the archive is missing or unreadable, a review is not valid UTF-8, or no
            review is found.
    """
    if not archive.is_file():
        raise UserError(
            f"{archive}: no such archive; run `sentiment-rnn fetch` (or `dvc repro fetch`) first"
        )
    rows: list[tuple[str, int, int, str, str]] = []
    try:
        with tarfile.open(archive, "r:gz") as members:
            # A bar on a terminal only: in DVC or CI logs the summary line below says enough.
            progress = tqdm(
                members, desc="reading reviews", unit=" files", disable=None, leave=False
            )
            for member in progress:
                match = _REVIEW_MEMBER.search(member.name)
                if match is None or not member.isfile():
                    continue
                split, polarity, number, rating = match.groups()
                handle = members.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() members always have data
                    continue
                with handle:
                    payload = handle.read()
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise UserError(
                        f"{archive}: member {member.name} is not valid UTF-8 (byte "
                        f"{error.start}); re-encode that review as UTF-8 or fetch the archive again"
                    ) from None
                review_id = f"{split}/{polarity}/{number}_{rating}"
                rows.append((review_id, int(rating), LABELS[polarity], split, text))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise UserError(
            f"{archive}: not a readable gzip tar archive ({error}); run `sentiment-rnn fetch` "
            "again to replace it"
        ) from None

    if not rows:
        raise UserError(
            f"{archive}: no reviews found (expected members like aclImdb/train/pos/0_9.txt); "
            "check data.url points at the IMDB archive"
        )
    reviews = _table(rows)
    duplicated = reviews["id"][reviews["id"].duplicated()]
    if not duplicated.empty:
        raise UserError(
            f"{archive}: review {duplicated.iloc[0]} appears twice; repack the archive with "
            "each review once"
        )
    for split in ("train", "test"):
        if not (reviews["split"] == split).any():
            raise UserError(
                f"{archive}: no {split} reviews (expected members like aclImdb/{split}/pos/0_9.txt)"
            )
    # Sorting makes the split independent of the order in which the archive lists its members.
    return reviews.sort_values("id", ignore_index=True)


def read_extra(files: Sequence[str]) -> pd.DataFrame:
    """Read labelled reviews from CSV files with the columns ``text`` and ``label`` (0 or 1).

    Args:
        files: CSV paths, relative to the project root. Other columns are ignored.

    Returns:
        A table like :func:`read_archive`'s with split "train", id ``extra/<file stem>/<row>``
        (row counted from 1, the header not included) and rating -1.

    Raises:
        UserError: For a missing file, a missing column, a file that is not UTF-8, two files
            with the same stem, or a row with an empty text or a label other than 0 or 1
            (named by file and CSV line, the header being line 1).
    """
    rows: list[tuple[str, int, int, str, str]] = []
    stems: dict[str, str] = {}
    for name in files:
        path = Path(name)
        if path.stem in stems:
            raise UserError(
                f"data.extra: {stems[path.stem]} and {name} share the name {path.stem!r}, "
                "which review ids are made of; rename one (or list a file once)"
            )
        stems[path.stem] = name
        if not path.is_file():
            raise UserError(f"data.extra: {name}: no such file; fix the path or remove it")
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                rows.extend(_read_extra_file(handle, name, path.stem))
        except UnicodeDecodeError:
            raise UserError(f"data.extra: {name}: not UTF-8 text; save it as UTF-8 CSV") from None
        except csv.Error as error:
            raise UserError(f"data.extra: {name}: not a valid CSV file ({error})") from None
    return _table(rows)


def _read_extra_file(
    handle: io.TextIOBase, name: str, stem: str
) -> list[tuple[str, int, int, str, str]]:
    """Validate and convert the rows of one extra CSV file (see :func:`read_extra`)."""
    reader = csv.DictReader(handle)
    columns = reader.fieldnames or []
    for required in ("text", "label"):
        if required not in columns:
            found = ", ".join(columns) if columns else "none"
            raise UserError(
                f"data.extra: {name}: no column {required!r} (columns found: {found}); "
                "the header must name text and label"
            )
    rows = []
    for number, record in enumerate(reader, start=1):
        # The reader stands on the record's last line; a quoted text may span several lines.
        line = reader.line_num - sum(
            value.count("\n") for value in record.values() if isinstance(value, str)
        )
        text, label = record.get("text"), (record.get("label") or "").strip()
        if text is None or not text.strip():
            raise UserError(f"data.extra: {name}:{line}: empty text; fill it or drop the row")
        if label not in ("0", "1"):
            raise UserError(
                f"data.extra: {name}:{line}: label = {label!r}; allowed: 0 (negative), 1 (positive)"
            )
        rows.append((f"extra/{stem}/{number}", NO_RATING, int(label), "train", text))
    return rows


def split_validation(reviews: pd.DataFrame, validation_fraction: float, seed: int) -> pd.DataFrame:
    """Move a stratified, seeded share of the training reviews into a ``validation`` split.

    Args:
        reviews: The archive's reviews, splits "train" and "test".
        validation_fraction: Share of the training reviews to hold out.
        seed: Seed of the draw.

    Returns:
        A copy with some "train" rows relabelled "validation"; test rows are untouched.

    Raises:
        UserError: If the fraction leaves too few reviews on either side to stratify.
    """
    from sklearn.model_selection import train_test_split

    training = reviews.index[reviews["split"] == "train"]
    try:
        _, held_out = train_test_split(
            training,
            test_size=validation_fraction,
            random_state=seed,
            stratify=reviews.loc[training, "label"],
        )
    except ValueError as error:
        raise UserError(
            f"preprocess.validation_fraction = {validation_fraction}: cannot split "
            f"{len(training)} training reviews into stratified parts ({error}); choose a "
            "fraction that leaves reviews of both labels on each side"
        ) from None
    reviews = reviews.copy()
    reviews.loc[held_out, "split"] = "validation"
    return reviews


def _shuffled(reviews: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The rows in a seeded random order, so any prefix of a split is a fair sample."""
    return reviews.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _split_metrics(
    labels: np.ndarray, lengths: np.ndarray, out_of_vocabulary: np.ndarray, maxlen: int
) -> dict[str, float | int]:
    """Counts, lengths in words and shares of one split."""
    total = len(labels)
    positive = int(labels.sum())
    words = int(lengths.sum())
    return {
        "pos": positive,
        "neg": total - positive,
        "total": total,
        "tokens_mean": round(float(lengths.mean()), 1) if total else 0.0,
        "tokens_median": float(np.median(lengths)) if total else 0.0,
        "oov_share": round(float(out_of_vocabulary.sum()) / words, 4) if words else 0.0,
        # The start index takes one position, so a review of maxlen words is already cut.
        "truncated_share": round(float((lengths + 1 > maxlen).mean()), 4) if total else 0.0,
    }


def _metrics_document(
    split_metrics: dict[str, dict[str, float | int]], extra: int, vocabulary: Vocabulary
) -> dict[str, object]:
    """``metrics/data.json``: one small table per quantity, keyed by split, for `dvc metrics`."""
    counts = ("pos", "neg", "total")
    document: dict[str, object] = {
        "reviews": {
            split: {name: values[name] for name in counts}
            for split, values in split_metrics.items()
        },
        "extra_reviews": extra,
    }
    for name in ("tokens_mean", "tokens_median", "oov_share", "truncated_share"):
        document[name] = {split: values[name] for split, values in split_metrics.items()}
    document["vocabulary_words"] = len(vocabulary.word_index)
    return document


def _write_processed(
    splits: dict[str, pd.DataFrame],
    arrays: dict[str, np.ndarray],
    vocabulary: Vocabulary,
    destination: Path,
) -> None:
    """Write every file of ``data/processed`` into a fresh folder, then swap it in.

    Readers see either the old folder or the complete new one, never arrays from one run with a
    vocabulary from another.
    """
    staging = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
    retired = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for split, table in splits.items():
            np.savez(
                staging / f"{split}.npz",
                x=arrays[split],
                y=table["label"].to_numpy(dtype=np.int8),
                ids=table["id"].to_numpy(dtype=str),
            )
        (staging / VOCABULARY_FILE).write_text(vocabulary.to_json(), encoding="utf-8")
        reviews = pd.concat(splits.values(), ignore_index=True)[COLUMNS]
        reviews.to_parquet(staging / REVIEWS_FILE, index=False)

        if destination.exists():
            os.replace(destination, retired)
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def main(data: DataParams, preprocess: PreprocessParams) -> None:
    """Run the stage in the current directory (the project root).

    Args:
        data: ``data`` section: the extra CSV files (the archive is the fetch stage's output).
        preprocess: ``preprocess`` section: vocabulary size, length, validation split.

    Raises:
        UserError: For a missing or bad archive, a bad extra file or an impossible split.
    """
    started = time.perf_counter()
    archive = paths.archive_path()

    # The extra files are small and hand-made: check them before the long read of the archive.
    extra = read_extra(data.extra)
    if data.extra:
        log.info("read %d extra training reviews from %d file(s)", len(extra), len(data.extra))

    step = time.perf_counter()
    reviews = read_archive(archive)
    log.info(
        "read %d reviews (%d train, %d test) from %s in %.1f s",
        len(reviews),
        (reviews["split"] == "train").sum(),
        (reviews["split"] == "test").sum(),
        archive,
        time.perf_counter() - step,
    )

    reviews = split_validation(reviews, preprocess.validation_fraction, preprocess.seed)
    training = reviews[reviews["split"] == "train"]
    if not extra.empty:
        training = pd.concat([training, extra], ignore_index=True)
    splits = {
        "train": _shuffled(training, preprocess.seed),
        "validation": _shuffled(reviews[reviews["split"] == "validation"], preprocess.seed),
        "test": _shuffled(reviews[reviews["split"] == "test"], preprocess.seed),
    }
    log.info(
        "split: %s (validation_fraction %s, seed %d)",
        ", ".join(f"{len(table)} {split}" for split, table in splits.items()),
        preprocess.validation_fraction,
        preprocess.seed,
    )

    # Only the training part: words seen in validation or test must not shape the model input.
    step = time.perf_counter()
    train_tokens = [tokenize(text) for text in splits["train"]["text"]]
    vocabulary = Vocabulary.build(train_tokens, preprocess.num_words)
    log.info(
        "vocabulary: %d words (num_words %d) from %d training reviews in %.1f s",
        len(vocabulary.word_index),
        preprocess.num_words,
        len(train_tokens),
        time.perf_counter() - step,
    )

    step = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    split_metrics: dict[str, dict[str, float | int]] = {}
    words = 0
    for split, table in splits.items():
        # Validation and test are tokenised on the fly: only the training tokens are kept at
        # once, which keeps the full archive's peak memory at 0.8 GB instead of 1.3 GB.
        reviews_tokens = (
            train_tokens if split == "train" else (tokenize(text) for text in table["text"])
        )
        sequences, lengths = [], []
        for tokens in reviews_tokens:
            lengths.append(len(tokens))
            sequences.append(vocabulary.encode(tokens))
        words += sum(lengths)
        arrays[split] = pad(sequences, preprocess.maxlen)
        out_of_vocabulary = np.fromiter(
            (sequence.count(OOV) for sequence in sequences), np.int64, len(sequences)
        )
        split_metrics[split] = _split_metrics(
            table["label"].to_numpy(), np.array(lengths), out_of_vocabulary, preprocess.maxlen
        )
        if split == "train":
            del train_tokens
    log.info(
        "encoded %d words and padded to maxlen %d in %.1f s",
        words,
        preprocess.maxlen,
        time.perf_counter() - step,
    )

    step = time.perf_counter()
    _write_processed(splits, arrays, vocabulary, paths.PROCESSED_DIR)
    metrics = _metrics_document(split_metrics, len(extra), vocabulary)
    paths.write_atomically(METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    log.info(
        "wrote %s and %s in %.1f s", paths.PROCESSED_DIR, METRICS_FILE, time.perf_counter() - step
    )

    log.info(
        "preprocess done: %s; out of vocabulary %.1f%% of train words, %.1f%% of train reviews "
        "truncated; %.1f s",
        " / ".join(f"{len(table):,} {split}" for split, table in splits.items()),
        100 * split_metrics["train"]["oov_share"],
        100 * split_metrics["train"]["truncated_share"],
        time.perf_counter() - started,
    )


def run_cli(args: argparse.Namespace, params: Params) -> int | None:
    """``sentiment-rnn preprocess``: run :func:`main` with the loaded parameters."""
    del args  # the stage has no options of its own
    main(params.data, params.preprocess)
    return 0
