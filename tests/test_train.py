"""The train stage: real training of tiny models into a real SQLite MLflow store in tmp_path."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import review_text
from sentiment_rnn import cli, train
from sentiment_rnn.errors import UserError
from sentiment_rnn.model import expected_parameters
from sentiment_rnn.params import Params, TrainParams, parse_params
from sentiment_rnn.text import Vocabulary, encode_texts, tokenize

REPO = Path(__file__).resolve().parents[1]
NUM_WORDS, MAXLEN = 50, 40
SIZES = {"train": 96, "validation": 32, "test": 48}
CONTRACT_METRICS = [
    *(f"{name}_{kind}" for name in train.HEADLINE_METRICS for kind in ("mean", "std")),
    "params_total",
    "params_trainable",
    "params_formula",
    "epochs_run_mean",
]


def write_processed(folder: Path) -> None:
    """Encoded splits in the contract's format, from reviews whose cue words give the label."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews: dict[str, tuple[list[str], np.ndarray]] = {}
    offset = 0
    for split, size in SIZES.items():
        labels = np.arange(size) % 2
        texts = [review_text(offset + index, bool(label)) for index, label in enumerate(labels)]
        reviews[split] = (texts, labels.astype(np.int8))
        offset += size
    vocabulary = Vocabulary.build((tokenize(text) for text in reviews["train"][0]), NUM_WORDS)
    for split, (texts, labels) in reviews.items():
        ids = np.array([f"{split}/{'pos' if y else 'neg'}/{i}_7" for i, y in enumerate(labels)])
        np.savez(
            folder / f"{split}.npz",
            x=encode_texts(texts, vocabulary, MAXLEN),
            y=labels,
            ids=ids,
        )
    (folder / "vocabulary.json").write_text(vocabulary.to_json(), encoding="utf-8")


def small_params(**train_changes: Any) -> Params:
    """The repository's params.yaml, shrunk: tiny model, two epochs, two seeds."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["preprocess"].update(num_words=NUM_WORDS, maxlen=MAXLEN)
    raw["train"].update(
        embedding_dim=8, units=4, batch_size=16, epochs=2, seeds=[1, 2], use_tuned=False
    )
    raw["train"].update(train_changes)
    return parse_params(raw)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with processed data, the current directory, and its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "SENTIMENT_RNN_STORE_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    write_processed(tmp_path / "data" / "processed")
    yield tmp_path
    # The stage sets MLflow's process-wide tracking URI, which outlives the environment variable.
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def accuracy(model: Any, split: str) -> float:
    with np.load(Path("data/processed") / f"{split}.npz") as arrays:
        x, y = arrays["x"], arrays["y"]
    probabilities = np.asarray(model.predict(x, verbose=0)).ravel()
    return float(np.mean((probabilities > 0.5) == y))


@pytest.mark.slow
def test_train_lstm_end_to_end_logs_every_run_and_writes_the_contract(project: Path) -> None:
    import keras
    import mlflow
    from mlflow import MlflowClient

    summary = train.main("lstm", small_params())

    # Stage outputs, as the data contract spells them.
    model_dir = project / "models" / "lstm"
    assert (model_dir / "vocabulary.json").read_bytes() == (
        project / "data" / "processed" / "vocabulary.json"
    ).read_bytes()
    record = read_json(model_dir / "run.json")
    for key in ("experiment_id", "parent_run_id", "best_run_id", "best_seed", "model_uri"):
        assert record[key], key
    assert record["tuned"] is False
    assert (record["maxlen"], record["num_words"]) == (MAXLEN, NUM_WORDS)
    assert record["hyperparameters"]["units"] == 4
    assert record["hyperparameters"]["learning_rate"] == 0.001
    metrics = read_json(project / "metrics" / "train-lstm.json")
    assert sorted(metrics) == sorted(CONTRACT_METRICS)
    assert metrics == summary
    assert metrics["params_total"] == expected_parameters("lstm", NUM_WORDS, 8, 4) == 613
    assert metrics["params_formula"] == metrics["params_trainable"] == 613
    assert 0.0 <= metrics["test_accuracy_mean"] <= 1.0
    assert metrics["test_accuracy_std"] >= 0.0
    assert metrics["epochs_run_mean"] == 2.0
    with open(project / "plots" / "train-lstm.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [row["epoch"] for row in rows] == ["1", "2"]

    # MLflow: one parent run, one nested run per seed, all tagged.
    client = MlflowClient()
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.run_name == "train-lstm"
    children = client.search_runs(
        [record["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(run.info.run_name for run in children) == ["train-lstm-seed1", "train-lstm-seed2"]
    checksum = train.directory_md5(project / "data" / "processed")
    for run in [parent, *children]:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert (tags["variant"], tags["stage"], tags["data_checksum"]) == (
            "lstm",
            "train",
            checksum,
        )
        assert tags["git_commit"]
        params = run.data.params
        assert params["num_words"] == str(NUM_WORDS) and params["maxlen"] == str(MAXLEN)
        assert params["embedding_dim"] == "8" and params["optimizer"] == "rmsprop"
        assert params["tuned"] == "False"
        contexts = {
            entry.dataset.name: (
                {tag.key: tag.value for tag in entry.tags}["mlflow.data.context"],
                entry.dataset.digest,
            )
            for entry in run.inputs.dataset_inputs
        }
        assert contexts == {
            f"imdb-{split}": (context, train.file_md5(Path(f"data/processed/{split}.npz")))
            for split, context in (
                ("train", "training"),
                ("validation", "validation"),
                ("test", "test"),
            )
        }

    # The parent carries exactly the numbers of the metrics file.
    for key, value in metrics.items():
        assert parent.data.metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key

    by_seed = {int(run.data.params["seed"]): run for run in children}
    for seed, run in by_seed.items():
        logged = run.data.metrics
        assert logged["params_total"] == logged["params_formula"] == 613
        assert logged["params_embedding"] == NUM_WORDS * 8
        assert logged["params_recurrent"] == 4 * (4 * (4 + 8) + 4)
        # The best epoch's validation accuracy, next to the per-epoch curve of val_accuracy.
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert logged["best_val_accuracy"] == max(point.value for point in curve)
        assert logged["fit_seconds"] > 0 and logged["seconds_per_epoch"] > 0
        assert logged["train_reviews_per_second"] > 0
        assert 0 < logged["latency_p50_ms"] <= logged["latency_p95_ms"]
        assert logged["tn"] + logged["fp"] + logged["fn"] + logged["tp"] == SIZES["test"]
        assert logged["test_accuracy"] == pytest.approx(
            (logged["tn"] + logged["tp"]) / SIZES["test"]
        )
        for name in ("test_roc_auc", "test_f1", "test_precision", "test_recall", "test_loss"):
            assert math.isfinite(logged[name]), name
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted(point.step for point in history) == [1, 2], (seed, name)
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.json", "confusion_matrix.png", "learning_curve.png"} <= artifacts
    assert {item.path for item in client.list_artifacts(parent.info.run_id)} >= {
        "learning_curve.png",
        "run.json",
    }

    # The best seed by validation accuracy is the one kept, and its logged model reloads to the
    # same test accuracy (so does the stage's model.keras).
    best = max(by_seed.values(), key=lambda run: run.data.metrics["best_val_accuracy"])
    assert record["best_seed"] == int(best.data.params["seed"])
    assert record["best_run_id"] == best.info.run_id
    logged_model = mlflow.get_logged_model(record["model_uri"].removeprefix("models:/"))
    assert logged_model.source_run_id == best.info.run_id
    signature = mlflow.models.get_model_info(record["model_uri"]).signature
    spec = signature.inputs.to_dict()[0]["tensor-spec"]
    assert (spec["dtype"], tuple(spec["shape"])) == ("int32", (-1, MAXLEN))
    reloaded = mlflow.tensorflow.load_model(record["model_uri"])
    assert accuracy(reloaded, "test") == best.data.metrics["test_accuracy"]
    saved = keras.saving.load_model(model_dir / "model.keras")
    assert accuracy(saved, "test") == best.data.metrics["test_accuracy"]
    assert saved.count_params() == 613


@pytest.mark.slow
def test_tuned_values_and_early_stopping_reach_the_model(project: Path) -> None:
    from mlflow import MlflowClient

    tuned = {"learning_rate": 0.05, "units": 6, "embedding_dim": 5, "batch_size": 32}
    path = project / "tuning" / "rnn" / "best_params.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(tuned), encoding="utf-8")
    params = small_params(use_tuned=True, epochs=6, patience=1, seeds=[7])

    metrics = train.main("rnn", params)

    record = read_json(project / "models" / "rnn" / "run.json")
    assert record["tuned"] is True
    assert {key: record["hyperparameters"][key] for key in tuned} == tuned
    assert metrics["params_total"] == expected_parameters("rnn", NUM_WORDS, 5, 6)
    assert metrics["test_accuracy_std"] == 0.0  # one seed
    run = MlflowClient().get_run(record["best_run_id"])
    assert run.data.params["units"] == "6" and run.data.params["learning_rate"] == "0.05"
    assert run.data.params["tuned"] == "True"
    assert run.data.params["tuned_keys"] == "batch_size,embedding_dim,learning_rate,units"

    # Training stopped early (patience 1) and restored the weights of the best epoch, which is
    # not the last one: the saved model has the best epoch's validation loss, not the last's.
    import keras

    client = MlflowClient()
    best_run = client.get_run(record["best_run_id"]).data.metrics
    curve = sorted(client.get_metric_history(record["best_run_id"], "val_loss"), key=step)
    assert best_run["best_epoch"] < best_run["epochs_run"] == len(curve) < 6
    assert metrics["val_accuracy_mean"] == best_run["best_val_accuracy"]
    assert best_run["best_val_loss"] == curve[int(best_run["best_epoch"]) - 1].value
    assert best_run["best_val_loss"] != pytest.approx(curve[-1].value, rel=1e-3)
    saved = keras.saving.load_model(project / "models" / "rnn" / "model.keras")
    with np.load(project / "data" / "processed" / "validation.npz") as arrays:
        loss, _ = saved.evaluate(arrays["x"], arrays["y"], verbose=0)
    assert loss == pytest.approx(best_run["best_val_loss"], rel=1e-4)


def step(point: Any) -> int:
    return int(point.step)


def test_use_tuned_false_ignores_the_tuned_file(tmp_path: Path) -> None:
    path = tmp_path / "best_params.json"
    path.write_text(json.dumps({"units": 64}), encoding="utf-8")
    textbook = small_params().train

    effective, applied = train.resolve_hyperparameters(textbook, "lstm", path)

    assert effective == textbook and applied == {}


def test_tuned_file_overrides_only_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "best_params.json"
    tuned = {"learning_rate": 0.003, "optimizer": "adam", "batch_size": 64, "dropout": 0.2}
    path.write_text(json.dumps(tuned), encoding="utf-8")
    textbook = small_params(use_tuned=True).train

    effective, applied = train.resolve_hyperparameters(textbook, "lstm", path)

    assert applied == tuned
    assert isinstance(effective, TrainParams)
    assert (effective.learning_rate, effective.optimizer) == (0.003, "adam")
    assert (effective.batch_size, effective.dropout) == (64, 0.2)
    assert (effective.units, effective.epochs, effective.seeds) == (4, 2, [1, 2])


def test_missing_tuned_file_trains_the_params_yaml_values(tmp_path: Path) -> None:
    textbook = small_params(use_tuned=True).train

    effective, applied = train.resolve_hyperparameters(textbook, "rnn", tmp_path / "absent.json")

    assert effective == textbook and applied == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"units": 8, "momentum": 0.9}', "unknown key(s) momentum"),
        ('{"dropout": 1.5}', "dropout = 1.5"),
        ('{"optimizer": "sgd"}', "optimizer = 'sgd'"),
        ('{"units": ', "not valid JSON"),
        ("[0.001]", "expected an object"),
    ],
)
def test_bad_tuned_file_is_a_user_error_naming_it(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "best_params.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(UserError) as raised:
        train.resolve_hyperparameters(small_params(use_tuned=True).train, "lstm", path)

    text = str(raised.value)
    assert str(path) in text and message in text and "\n" not in text
    assert "dvc repro tune@lstm" in text


def test_missing_processed_data_fails_with_one_line_at_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")

    status = cli.main(["train", "--variant", "lstm"])

    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error == (
        "sentiment-rnn train: error: data/processed/train.npz: not found; "
        "run `dvc repro preprocess` (or `sentiment-rnn preprocess`) first"
    )


def test_data_made_with_another_maxlen_is_refused(project: Path) -> None:
    raw = small_params().model_dump()
    raw["preprocess"]["maxlen"] = MAXLEN + 10

    with pytest.raises(UserError, match=r"train\.npz: sequences have length 40 but preprocess"):
        train.load_split("train", parse_params(raw).preprocess)


def test_data_checksum_is_the_md5_dvc_records(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "processed"
    write_processed(folder)
    (folder / "nested").mkdir()
    (folder / "nested" / "notes.txt").write_text("line one\r\nline two\n", encoding="utf-8")
    dvc = Path(sys.executable).parent / "dvc"
    environment = {"DVC_NO_ANALYTICS": "1", "PATH": str(dvc.parent)}
    for command in (["init", "--no-scm", "--quiet"], ["add", "--quiet", "data/processed"]):
        subprocess.run([str(dvc), *command], cwd=tmp_path, env=environment, check=True, timeout=120)

    recorded = yaml.safe_load((tmp_path / "data" / "processed.dvc").read_text(encoding="utf-8"))

    assert train.directory_md5(folder) == recorded["outs"][0]["md5"]


def test_summary_uses_sample_std_and_histories_of_unequal_length() -> None:
    def result(seed: int, accuracy: float, epochs: int) -> train.SeedResult:
        metrics = {name: accuracy for name in train.HEADLINE_METRICS}
        metrics["best_val_accuracy"] = metrics.pop("val_accuracy") - 0.5
        metrics.update(params_total=10, params_trainable=10, params_formula=10, epochs_run=epochs)
        history = {
            name: [seed + epoch for epoch in range(epochs)] for name in train.HISTORY_COLUMNS
        }
        return train.SeedResult(seed, f"run{seed}", "models:/m", metrics, history, None)

    results = [result(1, 0.8, 3), result(3, 0.9, 2)]

    summary = train.summarize(results)
    history = train.mean_history(results)

    assert summary["test_accuracy_mean"] == pytest.approx(0.85)
    assert summary["test_accuracy_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert summary["val_accuracy_mean"] == pytest.approx(0.35)
    assert summary["epochs_run_mean"] == 2.5
    # Epoch 3 was reached by seed 1 only: its mean is seed 1's value.
    assert history["loss"] == [2.0, 3.0, 3.0]
    assert train.history_csv(history).splitlines()[:2] == [
        "epoch,accuracy,loss,val_accuracy,val_loss",
        "1,2.0,2.0,2.0,2.0",
    ]


def test_classification_metrics_by_hand() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=np.int8)
    probabilities = np.array([0.9, 0.6, 0.4, 0.2, 0.7, 0.1, 0.5, 0.8])

    metrics = train.classification_metrics(labels, probabilities)

    # 0.5 counts as negative, as in Keras' binary accuracy.
    assert (metrics["tp"], metrics["fn"], metrics["fp"], metrics["tn"]) == (3, 1, 1, 3)
    assert metrics["test_accuracy"] == 0.75
    assert metrics["test_precision"] == metrics["test_recall"] == metrics["test_f1"] == 0.75
    # 13 of the 16 positive-negative pairs are ranked right.
    assert metrics["test_roc_auc"] == pytest.approx(13 / 16)
    expected_loss = -np.mean(
        labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities)
    )
    assert metrics["test_loss"] == pytest.approx(expected_loss)


def test_dvc_yaml_train_stage_depends_on_every_train_key_and_only_it_does() -> None:
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    stage = pipeline["stages"]["train"]

    assert stage["foreach"] == "${variants}"
    body = stage["do"]
    assert body["cmd"] == "sentiment-rnn train --variant ${item}"
    assert set(body["params"]) == {
        *(f"train.{key}" for key in TrainParams.model_fields),
        "preprocess.num_words",
        "preprocess.maxlen",
        "mlflow.experiment",
    }
    assert set(body["deps"]) == {
        "data/processed",
        "tuning/${item}/best_params.json",
        "src/sentiment_rnn/train.py",
        "src/sentiment_rnn/model.py",
    }
    assert body["outs"][0] == "models/${item}"
    assert "metrics/train-${item}.json" in json.dumps(body["metrics"])
    assert "plots/train-${item}.csv" in json.dumps(body["outs"])
    # Changing train.* must not re-run the stages before train.
    for name in ("fetch", "preprocess"):
        listed = pipeline["stages"][name].get("params", [])
        assert not [key for key in listed if str(key).startswith("train.")], name
    curves = json.dumps(pipeline["plots"])
    for variant in ("lstm", "rnn"):
        assert f"plots/train-{variant}.csv" in curves
    assert '"x": "epoch"' in curves and "val_accuracy" in curves
