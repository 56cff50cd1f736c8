"""The preprocess stage on small archives: splits, vocabulary, extra CSV files, errors, metrics."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import build_archive, review_text
from sentiment_rnn import cli, preprocess
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import DataParams, PreprocessParams
from sentiment_rnn.text import OOV, Vocabulary, encode_texts, tokenize

ARCHIVE = Path("data/raw/aclImdb_v1.tar.gz")
PROCESSED = Path("data/processed")
SPLITS = ("train", "validation", "test")
REPO = Path(__file__).resolve().parents[1]


def data_params(*extra: str) -> DataParams:
    return DataParams(url="file:///nowhere/aclImdb_v1.tar.gz", sha256="0" * 64, extra=list(extra))


def preprocess_params(**changes: object) -> PreprocessParams:
    values: dict[str, object] = {
        "num_words": 60,
        "maxlen": 30,
        "validation_fraction": 0.25,
        "seed": 7,
    }
    values.update(changes)
    return PreprocessParams.model_validate(values)


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    """A gzip tar holding exactly ``members`` (name -> content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def unbalanced_members(positive: int, negative: int) -> dict[str, bytes]:
    """Train reviews with the given label counts, and 4 test reviews per label."""
    members = {}
    for split, counts in (("train", (positive, negative)), ("test", (4, 4))):
        for label, count in zip(("pos", "neg"), counts, strict=True):
            for number in range(count):
                rating = 8 if label == "pos" else 2
                text = review_text(number, label == "pos").encode()
                members[f"aclImdb/{split}/{label}/{number}_{rating}.txt"] = text
    return members


def load_split(split: str) -> dict[str, np.ndarray]:
    with np.load(PROCESSED / f"{split}.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def load_metrics() -> dict:
    return json.loads(Path("metrics/data.json").read_text(encoding="utf-8"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def archived(project: Path) -> Path:
    """The conftest archive (20 reviews per split and label) where fetch puts it."""
    return build_archive(project / ARCHIVE, per_class=20)


def test_writes_every_output_with_contract_types(archived: Path) -> None:
    preprocess.main(data_params(), preprocess_params())

    counts = {"train": 30, "validation": 10, "test": 40}
    for split in SPLITS:
        arrays = load_split(split)
        assert arrays["x"].dtype == np.int32
        assert arrays["x"].shape == (counts[split], 30)
        assert arrays["y"].dtype == np.int8
        assert set(arrays["y"].tolist()) == {0, 1}
        assert arrays["ids"].dtype.kind == "U"
        assert arrays["x"].max() < 60
    reviews = pd.read_parquet(PROCESSED / "reviews.parquet")
    assert list(reviews.columns) == ["id", "rating", "label", "split", "text"]
    assert reviews["split"].value_counts().to_dict() == counts
    assert Vocabulary.load(PROCESSED / "vocabulary.json").num_words == 60
    # No staging or retired folder is left behind next to the output.
    assert sorted(path.name for path in Path("data").iterdir()) == ["processed", "raw"]
    assert Path("metrics/data.json").is_file()


def test_rows_of_arrays_and_table_agree(archived: Path) -> None:
    preprocess.main(data_params(), preprocess_params())

    reviews = pd.read_parquet(PROCESSED / "reviews.parquet")
    vocabulary = Vocabulary.load(PROCESSED / "vocabulary.json")
    for split in SPLITS:
        arrays = load_split(split)
        table = reviews[reviews["split"] == split]
        assert arrays["ids"].tolist() == table["id"].tolist()
        assert arrays["y"].tolist() == table["label"].tolist()
        # The path a served model takes from raw text gives the same input as training's.
        np.testing.assert_array_equal(arrays["x"], encode_texts(table["text"], vocabulary, 30))
    first = reviews.iloc[0]
    split, polarity, name = first["id"].split("/")
    assert first["label"] == (polarity == "pos")
    assert first["rating"] == int(name.split("_")[1])


def test_splits_are_disjoint_and_test_stays_test(archived: Path) -> None:
    preprocess.main(data_params(), preprocess_params())

    ids = {split: set(load_split(split)["ids"].tolist()) for split in SPLITS}
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert all(review.startswith("test/") for review in ids["test"])
    assert all(review.startswith("train/") for review in ids["train"] | ids["validation"])
    assert len(ids["train"] | ids["validation"]) == 40
    assert len(ids["test"]) == 40


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_split_is_stratified(project: Path, seed: int) -> None:
    # 30 positive, 10 negative: a validation quarter should hold 7.5 positive reviews.
    write_archive(project / ARCHIVE, unbalanced_members(30, 10))
    preprocess.main(data_params(), preprocess_params(seed=seed))

    for split, size in (("validation", 10), ("train", 30)):
        labels = load_split(split)["y"]
        assert len(labels) == size
        assert abs(int(labels.sum()) - 0.75 * size) <= 1


def test_split_is_seeded(archived: Path) -> None:
    def validation_ids(seed: int) -> list[str]:
        preprocess.main(data_params(), preprocess_params(seed=seed))
        return load_split("validation")["ids"].tolist()

    first = validation_ids(11)
    assert validation_ids(11) == first
    assert sorted(validation_ids(12)) != sorted(first)


def test_vocabulary_comes_from_training_split_only(project: Path) -> None:
    # Every review carries a marker word of its own, frequent enough to enter the vocabulary.
    members = {}
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            for number in range(10):
                marker = f"marker{split}{label}{number}"
                text = f"{review_text(number, label == 'pos')} {' '.join([marker] * 50)}"
                members[f"aclImdb/{split}/{label}/{number}_5.txt"] = text.encode()
    write_archive(project / ARCHIVE, members)
    preprocess.main(data_params(), preprocess_params(num_words=500))

    words = set(Vocabulary.load(PROCESSED / "vocabulary.json").word_index)
    reviews = pd.read_parquet(PROCESSED / "reviews.parquet")
    markers = {
        split: {tokenize(text)[-1] for text in reviews.loc[reviews["split"] == split, "text"]}
        for split in SPLITS
    }
    assert markers["train"] <= words
    assert not markers["validation"] & words
    assert not markers["test"] & words


def test_non_review_members_are_ignored(project: Path) -> None:
    members = unbalanced_members(3, 3)
    members.update(
        {
            "aclImdb/README": b"readme",
            "aclImdb/imdb.vocab": b"the\n",
            "aclImdb/imdbEr.txt": b"0.1\n",
            "aclImdb/train/urls_pos.txt": b"http://example.invalid\n",
            "aclImdb/train/labeledBow.feat": b"1 0:9\n",
            "aclImdb/train/unsup/0_0.txt": b"unlabelled review",
            "aclImdb/train/pos/notes.txt": b"not a review name",
            "aclImdb/test/neutral/1_5.txt": b"no such label",
            # Any top folder (or none) is fine: only the last three parts are matched.
            "other-name/train/pos/100_9.txt": b"A great film.",
            "test/neg/100_1.txt": b"A dull film.",
        }
    )
    write_archive(project / ARCHIVE, members)
    preprocess.main(data_params(), preprocess_params(validation_fraction=0.5))

    reviews = pd.read_parquet(PROCESSED / "reviews.parquet")
    assert len(reviews) == 7 + 9
    assert {"train/pos/100_9", "test/neg/100_1"} <= set(reviews["id"])
    assert not reviews["text"].isin([b"unlabelled review".decode(), "not a review name"]).any()


def test_invalid_utf8_member_is_named(project: Path) -> None:
    members = unbalanced_members(3, 3)
    members["aclImdb/train/neg/77_2.txt"] = b"Caf\xe9 was awful"
    write_archive(project / ARCHIVE, members)
    with pytest.raises(UserError, match=r"aclImdb/train/neg/77_2\.txt is not valid UTF-8"):
        preprocess.main(data_params(), preprocess_params())
    assert not PROCESSED.exists()


def test_archive_without_reviews(project: Path) -> None:
    write_archive(project / ARCHIVE, {"aclImdb/README": b"readme", "aclImdb/imdb.vocab": b"a\n"})
    with pytest.raises(UserError, match=r"data/raw/aclImdb_v1\.tar\.gz: no reviews found"):
        preprocess.main(data_params(), preprocess_params())


def test_archive_without_test_reviews(project: Path) -> None:
    members = {name: text for name, text in unbalanced_members(3, 3).items() if "/train/" in name}
    write_archive(project / ARCHIVE, members)
    with pytest.raises(UserError, match="no test reviews"):
        preprocess.main(data_params(), preprocess_params())


def test_missing_archive_says_run_fetch(project: Path) -> None:
    with pytest.raises(UserError, match=r"aclImdb_v1\.tar\.gz: no such archive; run .*fetch"):
        preprocess.main(data_params(), preprocess_params())


def test_corrupt_archive(project: Path) -> None:
    (project / ARCHIVE).parent.mkdir(parents=True)
    (project / ARCHIVE).write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="not a readable gzip tar archive"):
        preprocess.main(data_params(), preprocess_params())


def test_truncated_archive(project: Path) -> None:
    whole = build_archive(project / "whole.tar.gz", per_class=20).read_bytes()
    (project / ARCHIVE).parent.mkdir(parents=True)
    (project / ARCHIVE).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="not a readable gzip tar archive .*run `sentiment-rnn"):
        preprocess.main(data_params(), preprocess_params())


def test_impossible_validation_fraction(project: Path) -> None:
    write_archive(project / ARCHIVE, unbalanced_members(2, 2))
    with pytest.raises(UserError, match=r"preprocess\.validation_fraction = 0\.1: cannot split 4"):
        preprocess.main(data_params(), preprocess_params(validation_fraction=0.1))


def write_csv(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_extra_csv_joins_training_split(archived: Path) -> None:
    preprocess.main(data_params(), preprocess_params())
    before_validation = load_split("validation")["ids"].tolist()

    extra = write_csv(
        Path("extra/new reviews.csv"),
        "text,label,source\n"
        + "\n".join(
            f'"zzfresh zzfresh, a {word} film",{label},web'
            for word, label in [("splendid", 1), ("dreadful", 0)]
        )
        + '\n"Two lines:\nzzfresh again",1,mail\n',
    )
    preprocess.main(data_params(extra), preprocess_params())

    train = load_split("train")
    assert len(train["ids"]) == 30 + 3
    extra_rows = {
        review: label
        for review, label in zip(train["ids"], train["y"], strict=True)
        if review.startswith("extra/")
    }
    assert extra_rows == {
        "extra/new reviews/1": 1,
        "extra/new reviews/2": 0,
        "extra/new reviews/3": 1,
    }
    assert load_split("validation")["ids"].tolist() == before_validation
    reviews = pd.read_parquet(PROCESSED / "reviews.parquet").set_index("id")
    assert reviews.loc["extra/new reviews/3", "text"] == "Two lines:\nzzfresh again"
    assert reviews.loc["extra/new reviews/3", "rating"] == -1
    assert reviews.loc["extra/new reviews/1", "split"] == "train"
    # The extra rows are training text, so their words count for the vocabulary.
    assert "zzfresh" in Vocabulary.load(PROCESSED / "vocabulary.json").word_index
    assert load_metrics()["extra_reviews"] == 3
    assert load_metrics()["reviews"]["train"]["total"] == 33


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('text,label\n"fine",1\n"",0\n', r"bad\.csv:3: empty text"),
        ("text,label\nfine,1\n   ,0\n", r"bad\.csv:3: empty text"),
        ("text,label\nfine,1\nok,2\n", r"bad\.csv:3: label = '2'; allowed: 0 .*1"),
        ("text,label\nfine,1\nok,positive\n", r"bad\.csv:3: label = 'positive'"),
        ("text,label\nfine,1\nno label here\n", r"bad\.csv:3: label = ''"),
        # A quoted text over three lines: the bad row after it starts on line 5.
        ('text,label\n"one\ntwo\nthree",1\nbad,-1\n', r"bad\.csv:5: label = '-1'"),
        ('text,label\r\n"one\r\ntwo",1\r\nbad,-1\r\n', r"bad\.csv:4: label = '-1'"),
        # Blank lines are skipped but still counted.
        ("text,label\n\nfine,1\n\nok,5\n", r"bad\.csv:5: label = '5'"),
        ('text,label\nfine,1\n"two\nlines",\n', r"bad\.csv:3: label = ''"),
        ("label,review\n1,fine\n", r"bad\.csv: no column 'text' \(columns found: label, review"),
        ("text\nfine\n", r"bad\.csv: no column 'label'"),
        ("", r"bad\.csv: no column 'text' \(columns found: none\)"),
    ],
)
def test_bad_extra_csv_names_file_and_line(archived: Path, content: str, message: str) -> None:
    extra = write_csv(Path("extra/bad.csv"), content)
    with pytest.raises(UserError, match=message) as raised:
        preprocess.main(data_params(extra), preprocess_params())
    assert "\n" not in str(raised.value)
    assert "extra/bad.csv" in str(raised.value)


def test_missing_extra_file(archived: Path) -> None:
    with pytest.raises(UserError, match=r"data\.extra: extra/absent\.csv: no such file"):
        preprocess.main(data_params("extra/absent.csv"), preprocess_params())


def test_extra_files_with_the_same_stem(archived: Path) -> None:
    first = write_csv(Path("a/new.csv"), "text,label\nfine,1\n")
    second = write_csv(Path("b/new.csv"), "text,label\nbad,0\n")
    with pytest.raises(UserError, match=r"a/new\.csv and b/new\.csv share the name 'new'"):
        preprocess.main(data_params(first, second), preprocess_params())


def test_metrics_file(archived: Path) -> None:
    preprocess.main(data_params(), preprocess_params(num_words=8, maxlen=30))

    metrics = load_metrics()
    assert metrics["reviews"] == {
        "train": {"pos": 15, "neg": 15, "total": 30},
        "validation": {"pos": 5, "neg": 5, "total": 10},
        "test": {"pos": 20, "neg": 20, "total": 40},
    }
    assert metrics["extra_reviews"] == 0
    assert metrics["vocabulary_words"] == 5

    reviews = pd.read_parquet(PROCESSED / "reviews.parquet")
    vocabulary = Vocabulary.load(PROCESSED / "vocabulary.json")
    for split in SPLITS:
        tokens = [tokenize(text) for text in reviews.loc[reviews["split"] == split, "text"]]
        lengths = np.array([len(words) for words in tokens])
        unknown = sum(word not in vocabulary.word_index for words in tokens for word in words)
        assert metrics["tokens_mean"][split] == pytest.approx(lengths.mean(), abs=0.05)
        assert metrics["tokens_median"][split] == np.median(lengths)
        assert metrics["oov_share"][split] == pytest.approx(unknown / lengths.sum(), abs=1e-4)
        assert metrics["truncated_share"][split] == pytest.approx(
            (lengths + 1 > 30).mean(), abs=1e-4
        )
        assert 0 < metrics["oov_share"][split] < 1
        assert 0 <= metrics["truncated_share"][split] <= 1
        # The OOV index is what the arrays hold for those words (up to truncation).
        assert (load_split(split)["x"] == OOV).any()
    # The conftest reviews have 22 to 51 words: some training reviews are cut at 30, not all.
    assert 0 < metrics["truncated_share"]["train"] < 1


def test_cli_runs_the_stage_and_reports_user_errors(
    archived: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["preprocess"].update(num_words=40, maxlen=25)
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    assert cli.main(["preprocess"]) == 0
    assert load_split("train")["x"].shape == (32, 25)

    archived.unlink()
    capsys.readouterr()
    assert cli.main(["preprocess"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("sentiment-rnn preprocess: error: data/raw/aclImdb_v1.tar.gz")
    assert "Traceback" not in error
