"""A tiny trained project for the compare, serving, promote and retrain tests.

The train stage's outputs are rebuilt here in the contract's format: small real Keras models
trained on reviews from ``conftest.review_text``, ``models/<v>/{model.keras,vocabulary.json,
run.json}``, ``metrics/train-<v>.json``, ``plots/train-<v>.csv``, real MLflow parent runs
``train-<v>`` in the test's SQLite store, and ``data/processed/reviews.parquet``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import review_text
from sentiment_rnn import text
from sentiment_rnn.params import MlflowParams, RegistryParams

NUM_WORDS = 40
MAXLEN = 64
TRAIN_REVIEWS = 240
TEST_REVIEWS = 120
EXPERIMENT = MlflowParams(experiment="sentiment-rnn-tests")
REGISTRY = RegistryParams(model_name="sentiment-rnn-tests", min_delta=0.002)

# Synthetic headline numbers in the contract's format; the LSTM costs more and wins clearly.
HEADLINES = {
    "lstm": {
        "test_accuracy": (0.8612, 0.0041),
        "test_roc_auc": (0.9301, 0.0030),
        "val_accuracy": (0.8650, 0.0035),
        "params_total": 24353,
        "seconds_per_epoch": (12.4, 0.3),
        "fit_seconds": (124.0, 3.0),
        "epochs": (10.0, 0.0),
    },
    "rnn": {
        "test_accuracy": (0.8190, 0.0102),
        "test_roc_auc": (0.8905, 0.0080),
        "val_accuracy": (0.8230, 0.0090),
        "params_total": 18113,
        "seconds_per_epoch": (5.8, 0.2),
        "fit_seconds": (52.0, 2.0),
        "epochs": (9.0, 1.0),
    },
}


@contextmanager
def store_at(root: Path) -> Iterator[str]:
    """Work in ``root`` with a fresh MLflow SQLite store there; undo both afterwards.

    ``mlflow.set_tracking_uri`` is process-wide and wins over ``MLFLOW_TRACKING_URI``, so a URI
    set by an earlier test (the stages set it) would otherwise outlive that test's environment.
    """
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        patch.delenv("SENTIMENT_RNN_STORE_ROOT", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


def reviews_table() -> pd.DataFrame:
    """Train and test reviews in the preprocess stage's ``reviews.parquet`` layout."""
    rows = []
    for split, count, offset in (("train", TRAIN_REVIEWS, 0), ("test", TEST_REVIEWS, 1000)):
        for number in range(count):
            positive = number % 2 == 0
            rows.append(
                {
                    "id": f"{split}/{'pos' if positive else 'neg'}/{number}_{8 if positive else 2}",
                    "rating": 8 if positive else 2,
                    "label": int(positive),
                    "split": split,
                    "text": review_text(number + offset, positive),
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TinyModels:
    """Model folders (``model.keras`` + ``vocabulary.json``) built once per test session.

    Attributes:
        good: An LSTM trained to near-perfect accuracy on the tiny reviews.
        fair: A SimpleRNN trained for one epoch.
        poor: An untrained SimpleRNN: about chance.
    """

    good: Path
    fair: Path
    poor: Path


_BUILT: dict[str, TinyModels] = {}


def tiny_models(root: Path) -> TinyModels:
    """Train the three tiny models under ``root`` once per session (a few seconds on CPU)."""
    if "models" in _BUILT:
        return _BUILT["models"]
    import keras

    from sentiment_rnn.model import build_model, compile_model

    keras.utils.set_random_seed(7)
    train = reviews_table().query("split == 'train'")
    vocabulary = text.Vocabulary.build(
        (text.tokenize(review) for review in train["text"]), NUM_WORDS
    )
    sequences = text.encode_texts(train["text"], vocabulary, MAXLEN)
    labels = train["label"].to_numpy(dtype=np.int8)

    def save(model: keras.Model, name: str) -> Path:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / "model.keras")
        (folder / "vocabulary.json").write_text(vocabulary.to_json(), encoding="utf-8")
        return folder

    good = compile_model(build_model("lstm", NUM_WORDS, MAXLEN, 8, 8), "adam", 0.02, False)
    good.fit(sequences, labels, epochs=8, batch_size=32, verbose=0)
    fair = compile_model(build_model("rnn", NUM_WORDS, MAXLEN, 8, 4), "adam", 0.01, False)
    fair.fit(sequences, labels, epochs=1, batch_size=32, verbose=0)
    poor = build_model("rnn", NUM_WORDS, MAXLEN, 8, 4)
    _BUILT["models"] = TinyModels(save(good, "good"), save(fair, "fair"), save(poor, "poor"))
    return _BUILT["models"]


def metrics_for(variant: str) -> dict[str, float]:
    """``metrics/train-<v>.json`` in the contract's flat format."""
    numbers = HEADLINES[variant]
    metrics: dict[str, float] = {}
    for name in (
        "test_accuracy",
        "test_roc_auc",
        "val_accuracy",
        "seconds_per_epoch",
        "fit_seconds",
    ):
        metrics[f"{name}_mean"], metrics[f"{name}_std"] = numbers[name]
    for name in ("test_loss", "test_f1", "test_precision", "test_recall", "train_accuracy"):
        metrics[f"{name}_mean"], metrics[f"{name}_std"] = 0.5, 0.01
    seconds, spread = numbers["seconds_per_epoch"]
    metrics["train_reviews_per_second_mean"] = 20000 / seconds
    metrics["train_reviews_per_second_std"] = 20000 / seconds * spread / seconds
    metrics["latency_p50_ms_mean"], metrics["latency_p50_ms_std"] = (
        (21.0, 1.0) if variant == "lstm" else (11.0, 0.5)
    )
    metrics["latency_p95_ms_mean"], metrics["latency_p95_ms_std"] = (
        (30.0, 2.0) if variant == "lstm" else (16.0, 1.0)
    )
    metrics["params_total"] = numbers["params_total"]
    metrics["params_trainable"] = numbers["params_total"]
    metrics["params_formula"] = numbers["params_total"]
    metrics["epochs_run_mean"] = numbers["epochs"][0]
    return metrics


def history_for(variant: str) -> pd.DataFrame:
    """``plots/train-<v>.csv``: a plausible learning curve."""
    epochs = np.arange(1, 11)
    final = HEADLINES[variant]["val_accuracy"][0]
    val_accuracy = final - (final - 0.5) * np.exp(-epochs / 2.5)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "accuracy": val_accuracy + 0.02,
            "loss": 0.7 * np.exp(-epochs / 4),
            "val_accuracy": val_accuracy,
            "val_loss": 0.7 * np.exp(-epochs / 5) + 0.05,
        }
    )


def write_trained_project(root: Path, models: dict[str, Path]) -> dict[str, str]:
    """Write what the preprocess and train stages leave, and log the train parent runs.

    Args:
        root: The project folder (the current directory of the test).
        models: Variant to a tiny model folder from :func:`tiny_models`.

    Returns:
        The MLflow parent run id of each variant.
    """
    import mlflow

    from sentiment_rnn import tracking

    processed = root / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    reviews_table().to_parquet(processed / "reviews.parquet", index=False)

    experiment_id = tracking.configure(EXPERIMENT.experiment)
    parent_ids: dict[str, str] = {}
    for variant, source in models.items():
        metrics = metrics_for(variant)
        with mlflow.start_run(
            run_name=f"train-{variant}", tags={"variant": variant, "stage": "train"}
        ) as parent:
            mlflow.log_metrics(metrics)
            with mlflow.start_run(run_name=f"train-{variant}-seed1", nested=True) as child:
                best_run_id = child.info.run_id
        parent_ids[variant] = parent.info.run_id

        model_dir = root / "models" / variant
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "model.keras", model_dir / "model.keras")
        shutil.copy(source / "vocabulary.json", model_dir / "vocabulary.json")
        run = {
            "experiment_id": experiment_id,
            "parent_run_id": parent.info.run_id,
            "best_run_id": best_run_id,
            "best_seed": 1,
            "model_uri": f"runs:/{best_run_id}/model",
            "hyperparameters": {
                "learning_rate": 0.0021 if variant == "lstm" else 0.0043,
                "optimizer": "adam" if variant == "lstm" else "rmsprop",
                "batch_size": 128,
                "dropout": 0.12,
                "recurrent_dropout": 0.0,
                "units": 32,
                "embedding_dim": 32,
            },
            "tuned": True,
            "tuned_keys": ["dropout", "learning_rate", "optimizer"],
            "maxlen": MAXLEN,
            "num_words": NUM_WORDS,
        }
        (model_dir / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
        (root / "metrics").mkdir(exist_ok=True)
        (root / "metrics" / f"train-{variant}.json").write_text(json.dumps(metrics))
        (root / "plots").mkdir(exist_ok=True)
        history_for(variant).to_csv(root / "plots" / f"train-{variant}.csv", index=False)
    return parent_ids


def register(model_dir: Path, registry: RegistryParams = REGISTRY, alias: str | None = None) -> str:
    """Log a tiny model's raw-text pyfunc in its own run, register it, optionally alias it.

    Returns:
        The new version.
    """
    import mlflow

    from sentiment_rnn import serving, tracking

    tracking.configure(EXPERIMENT.experiment)
    with mlflow.start_run(run_name=f"register-{model_dir.name}"):
        info = serving.log_text_model(f"text-{model_dir.name}", model_dir)
    version = str(
        mlflow.register_model(
            info.model_uri, registry.model_name, tags={"fixture": model_dir.name}
        ).version
    )
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(registry.model_name, alias, version)
    return version
