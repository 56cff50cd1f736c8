"""Stage ``train``: fit one variant over several seeds and track every run in MLflow.

Reads ``data/processed/{train,validation,test}.npz`` and ``vocabulary.json`` (written by
preprocess) and, when ``train.use_tuned`` is true, ``tuning/<variant>/best_params.json`` (written by
tune), whose values replace the ``train.*`` keys of the same names. Writes ``models/<variant>/``
(``model.keras`` of the seed with the best validation accuracy, a copy of the vocabulary and
``run.json``), ``metrics/train-<variant>.json`` (each headline number as mean and standard deviation
over the seeds) and ``plots/train-<variant>.csv`` (the per-epoch history, mean over the seeds).
Run it with ``dvc repro train@lstm`` or ``sentiment-rnn train --variant lstm``.

MLflow gets a parent run ``train-<variant>`` and a nested run ``train-<variant>-seed<s>`` per seed,
all tagged with the variant, the stage, the git commit and the processed data's checksum: the md5
DVC gives the ``data/processed`` folder, computed here the way DVC does, so it equals the value in
``dvc.lock``. Early stopping watches the validation split; the test split is used once per seed,
after training. On a seed run ``loss``, ``accuracy``, ``val_loss`` and ``val_accuracy`` are the
per-epoch curves (step = epoch) and ``best_val_accuracy`` is the epoch whose weights were kept; the
parent run logs the mean curves and ``<metric>_mean`` / ``<metric>_std`` of the headline metrics,
the numbers of ``metrics/train-<variant>.json``.

On CPU the stage trains faster than a plain ``model.fit`` through XLA (``train.jit_compile``) and
several batches per call of the compiled step (:data:`~sentiment_rnn.model.STEPS_PER_EXECUTION`);
``benchmarks/train_speed.py`` measures the difference.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from sentiment_rnn import paths, tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.model import (
    STEPS_PER_EXECUTION,
    build_model,
    compile_model,
    configure_threads,
    expected_parameters,
)
from sentiment_rnn.params import TUNABLE_KEYS, Params, PreprocessParams, TrainParams, Variant

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# Validation and test predictions need no gradients, so a larger batch only saves calls.
PREDICT_BATCH_SIZE = 1024
LATENCY_WARMUP_CALLS = 20
LATENCY_SAMPLES = 200
# The same clipping as Keras' binary cross-entropy, so test_loss matches model.evaluate.
PROBABILITY_EPSILON = 1e-7
HISTORY_COLUMNS = ("accuracy", "loss", "val_accuracy", "val_loss")
# Reported as <name>_mean and <name>_std over seeds, in the metrics file and on the parent run.
HEADLINE_METRICS = (
    "test_accuracy",
    "test_loss",
    "test_roc_auc",
    "test_f1",
    "test_precision",
    "test_recall",
    "val_accuracy",
    "train_accuracy",
    "fit_seconds",
    "seconds_per_epoch",
    "train_reviews_per_second",
    "latency_p50_ms",
    "latency_p95_ms",
)
# A seed run's val_accuracy is its per-epoch curve; the best epoch's value has its own name there.
SEED_METRIC_NAMES = {"val_accuracy": "best_val_accuracy"}
PARAMETER_COUNT_KEYS = ("params_total", "params_trainable", "params_formula")


@dataclass(frozen=True)
class Split:
    """One encoded split as preprocess wrote it.

    Attributes:
        name: ``train``, ``validation`` or ``test``.
        path: The ``.npz`` file.
        x: Front-padded sequences, ``int32`` of shape ``(n, maxlen)``.
        y: Labels, 0 or 1.
        md5: The file's md5, the digest MLflow records for the dataset.
    """

    name: str
    path: Path
    x: np.ndarray
    y: np.ndarray
    md5: str

    @property
    def size(self) -> int:
        """Number of reviews."""
        return int(len(self.y))


@dataclass
class SeedResult:
    """What one seed's nested run produced."""

    seed: int
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    history: dict[str, list[float]]
    # Only the best seed's model is kept; the others are dropped to free memory.
    model: keras.Model | None = field(repr=False)


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes, as DVC records it for a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_md5(folder: Path) -> str:
    """The md5 DVC 3 gives a folder output, as ``dvc.lock`` shows it.

    DVC hashes the JSON list of ``{"md5", "relpath"}`` entries of the folder's files, sorted by
    path, and appends ``.dir``.

    Args:
        folder: The folder, ``data/processed`` here.

    Returns:
        ``<md5>.dir``.
    """
    entries = [
        {"md5": file_md5(path), "relpath": path.relative_to(folder).as_posix()}
        for path in folder.rglob("*")
        if path.is_file()
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def load_split(name: str, preprocess: PreprocessParams) -> Split:
    """Read one split and check it matches the preprocessing parameters.

    Args:
        name: ``train``, ``validation`` or ``test``.
        preprocess: The parameters the split must have been made with.

    Returns:
        The split.

    Raises:
        UserError: If the file is missing, unreadable or made with other parameters.
    """
    path = paths.split_path(name)
    rerun = "run `dvc repro preprocess` (or `sentiment-rnn preprocess`)"
    if not path.is_file():
        raise UserError(f"{path}: not found; {rerun} first")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a processed split ({exc}); {rerun} again") from None
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise UserError(
            f"{path}: expected x of shape (n, maxlen) and y of length n, got {x.shape} and "
            f"{y.shape}; {rerun} again"
        )
    if x.shape[1] != preprocess.maxlen:
        raise UserError(
            f"{path}: sequences have length {x.shape[1]} but preprocess.maxlen is "
            f"{preprocess.maxlen}; {rerun} again"
        )
    if not np.isin(y, (0, 1)).all():
        raise UserError(f"{path}: labels must be 0 or 1; {rerun} again")
    if int(x.max()) >= preprocess.num_words:
        raise UserError(
            f"{path}: word index {int(x.max())} is outside preprocess.num_words = "
            f"{preprocess.num_words}; {rerun} again"
        )
    return Split(name, path, x.astype(np.int32, copy=False), y.astype(np.int8), file_md5(path))


def tuned_params_path(variant: Variant) -> Path:
    """Where the tune stage writes a variant's best hyperparameters."""
    return paths.TUNING_DIR / variant / "best_params.json"


def resolve_hyperparameters(
    train: TrainParams, variant: Variant, path: Path | None = None
) -> tuple[TrainParams, dict[str, Any]]:
    """The train values in effect: ``params.yaml``, overridden by the tuned values if asked to.

    Args:
        train: The ``train`` section of ``params.yaml``.
        variant: ``lstm`` or ``rnn``.
        path: The tuned values; ``tuning/<variant>/best_params.json`` by default.

    Returns:
        The effective parameters and the tuned values applied (empty when none were).

    Raises:
        UserError: If the tuned file is not JSON, has an unknown key or a value out of range.
    """
    if not train.use_tuned:
        log.info("train.use_tuned is false: training the params.yaml values")
        return train, {}
    path = path or tuned_params_path(variant)
    if not path.is_file():
        log.warning(
            "%s not found: training the params.yaml values (run `dvc repro tune@%s` to tune)",
            path,
            variant,
        )
        return train, {}
    fix = f"re-run `dvc repro tune@{variant}` or set train.use_tuned: false"
    try:
        tuned = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON at line {exc.lineno}; {fix}") from None
    if not isinstance(tuned, dict):
        raise UserError(f"{path}: expected an object of hyperparameters; {fix}")
    unknown = sorted(set(tuned) - set(TUNABLE_KEYS))
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(TUNABLE_KEYS)}; {fix}"
        )
    try:
        effective = TrainParams.model_validate({**train.model_dump(), **tuned}, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise UserError(f"{path}: {key} = {error.get('input')!r}: {message}; {fix}") from None
    changed = {key: value for key, value in tuned.items() if getattr(train, key) != value}
    log.info(
        "using the tuned values of %s (%s); changed from params.yaml: %s",
        path,
        ", ".join(sorted(tuned)),
        ", ".join(f"{key} {getattr(train, key)!r} -> {value!r}" for key, value in changed.items())
        or "none",
    )
    return effective, tuned


def parameter_counts(
    model: keras.Model, variant: Variant, num_words: int, embedding_dim: int, units: int
) -> dict[str, int]:
    """Keras' parameter counts, per layer too, next to the textbook formula's."""
    counts = {
        "params_total": int(model.count_params()),
        "params_trainable": int(sum(np.prod(weight.shape) for weight in model.trainable_weights)),
        "params_formula": expected_parameters(variant, num_words, embedding_dim, units),
        "params_embedding": int(model.get_layer("embedding").count_params()),
        "params_recurrent": int(model.get_layer(variant).count_params()),
        "params_output": int(model.get_layer("output").count_params()),
    }
    if counts["params_total"] != counts["params_formula"]:
        log.warning(
            "Keras counts %d parameters but the formula gives %d",
            counts["params_total"],
            counts["params_formula"],
        )
    return counts


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Test metrics of predicted probabilities, with the confusion matrix as tn/fp/fn/tp.

    Args:
        labels: True labels, 0 or 1.
        probabilities: Predicted probabilities of the positive class.

    Returns:
        ``test_accuracy``, ``test_loss``, ``test_roc_auc`` (NaN with one class only), ``test_f1``,
        ``test_precision``, ``test_recall``, ``tn``, ``fp``, ``fn``, ``tp``.
    """
    from sklearn.metrics import (
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = labels.astype(np.int64)
    # Keras' binary accuracy counts a probability above 0.5 as positive.
    predicted = (probabilities > 0.5).astype(np.int64)
    clipped = np.clip(
        probabilities.astype(np.float64), PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON
    )
    loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    roc_auc = roc_auc_score(labels, probabilities) if len(np.unique(labels)) == 2 else math.nan
    return {
        "test_accuracy": float(np.mean(predicted == labels)),
        "test_loss": float(loss),
        "test_roc_auc": float(roc_auc),
        "test_f1": float(f1_score(labels, predicted, zero_division=0)),
        "test_precision": float(precision_score(labels, predicted, zero_division=0)),
        "test_recall": float(recall_score(labels, predicted, zero_division=0)),
        "tn": float(tn),
        "fp": float(fp),
        "fn": float(fn),
        "tp": float(tp),
    }


def prediction_latency_ms(
    model: keras.Model,
    sequences: np.ndarray,
    warmup: int = LATENCY_WARMUP_CALLS,
    samples: int = LATENCY_SAMPLES,
) -> tuple[float, float]:
    """Median and 95th percentile of one review's prediction time through the compiled model.

    The warm-up calls trace and compile the single-review prediction function, so the samples
    time serving, not compilation.

    Args:
        model: A compiled model.
        sequences: Reviews to predict, cycled through if fewer than needed.
        warmup: Untimed calls first.
        samples: Timed calls.

    Returns:
        p50 and p95 in milliseconds.
    """
    rows = len(sequences)
    for index in range(warmup):
        model.predict_on_batch(sequences[index % rows : index % rows + 1])
    seconds = np.empty(samples)
    for index in range(samples):
        review = sequences[index % rows : index % rows + 1]
        started = time.perf_counter()
        model.predict_on_batch(review)
        seconds[index] = time.perf_counter() - started
    p50, p95 = np.percentile(seconds * 1000.0, [50, 95])
    return float(p50), float(p95)


def learning_curve_figure(history: dict[str, Sequence[float]], title: str) -> Figure:
    """Accuracy and loss by epoch, training and validation, side by side.

    Built on ``matplotlib.figure.Figure`` without pyplot, so it renders with Agg and leaves no
    global figure state behind.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    accuracy_axis, loss_axis = figure.subplots(1, 2)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, name in ((accuracy_axis, "accuracy"), (loss_axis, "loss")):
        axis.plot(epochs, history[name], marker="o", label=f"training {name}")
        axis.plot(epochs, history[f"val_{name}"], marker="o", label=f"validation {name}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return figure


def confusion_figure(matrix: dict[str, float], title: str) -> Figure:
    """The test confusion matrix as a labelled 2 x 2 grid."""
    from matplotlib.figure import Figure

    cells = np.array([[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]])
    figure = Figure(figsize=(4, 3.6), layout="constrained")
    axis = figure.subplots()
    axis.imshow(cells, cmap="Blues")
    for (row, column), count in np.ndenumerate(cells):
        colour = "white" if count > cells.max() / 2 else "black"
        axis.text(column, row, f"{int(count):,}", ha="center", va="center", color=colour)
    axis.set_xticks([0, 1], ["negative", "positive"])
    axis.set_yticks([0, 1], ["negative", "positive"])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return figure


def summarize(results: Sequence[SeedResult]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one seed) of each headline metric."""
    summary: dict[str, float] = {}
    for name in HEADLINE_METRICS:
        seed_name = SEED_METRIC_NAMES.get(name, name)
        values = np.array([result.metrics[seed_name] for result in results], dtype=np.float64)
        summary[f"{name}_mean"] = float(np.mean(values))
        summary[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    for name in PARAMETER_COUNT_KEYS:
        summary[name] = float(results[0].metrics[name])
    summary["epochs_run_mean"] = float(
        np.mean([result.metrics["epochs_run"] for result in results])
    )
    return summary


def mean_history(results: Sequence[SeedResult]) -> dict[str, list[float]]:
    """Per-epoch mean over seeds; with early stopping, over the seeds that reached the epoch."""
    longest = max(len(result.history["loss"]) for result in results)
    mean: dict[str, list[float]] = {}
    for name in HISTORY_COLUMNS:
        table = np.full((len(results), longest), np.nan)
        for row, result in enumerate(results):
            table[row, : len(result.history[name])] = result.history[name]
        mean[name] = [float(value) for value in np.nanmean(table, axis=0)]
    return mean


def history_csv(history: dict[str, list[float]]) -> str:
    """The history as CSV with an ``epoch`` column counted from 1, for ``dvc plots``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *HISTORY_COLUMNS])
    for epoch in range(len(history["loss"])):
        writer.writerow([epoch + 1, *(repr(history[name][epoch]) for name in HISTORY_COLUMNS)])
    return buffer.getvalue()


def _epoch_logger(label: str, epochs: int, epoch_seconds: list[float]) -> keras.callbacks.Callback:
    """A callback that times each epoch, logs a line and sends the epoch's metrics to MLflow."""
    import keras
    import mlflow

    started: list[float] = []

    def on_epoch_begin(epoch: int, logs: dict[str, Any] | None = None) -> None:
        started.append(time.perf_counter())

    def on_epoch_end(epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - started[-1]
        epoch_seconds.append(seconds)
        values = {name: float(value) for name, value in (logs or {}).items()}
        mlflow.log_metrics({**values, "epoch_seconds": seconds}, step=epoch + 1)
        log.info(
            "%s epoch %d/%d: loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f (%.1f s)",
            label,
            epoch + 1,
            epochs,
            values.get("loss", math.nan),
            values.get("accuracy", math.nan),
            values.get("val_loss", math.nan),
            values.get("val_accuracy", math.nan),
            seconds,
        )

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


def _local_source(path: Path) -> Any:
    """An MLflow dataset source for a local file."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        # MLflow registers its local-file source for both the "" and "file" URI schemes, so every
        # local path matches twice and it warns; both matches are the same kind of source.
        warnings.filterwarnings(
            "ignore", message="The specified dataset source can be interpreted in multiple ways"
        )
        return resolve_dataset_source(str(path.resolve()))


def _log_datasets(splits: dict[str, Split]) -> dict[str, Any]:
    """Log the three splits as inputs of the active run; returns the MLflow datasets by name."""
    import mlflow

    contexts = {"train": "training", "validation": "validation", "test": "test"}
    datasets = {}
    for name, split in splits.items():
        dataset = mlflow.data.from_numpy(
            features=split.x,
            targets=split.y,
            source=_local_source(split.path),
            name=f"imdb-{name}",
            digest=split.md5,
        )
        mlflow.log_input(dataset, context=contexts[name])
        datasets[name] = dataset
    return datasets


def build_compiled_model(
    variant: Variant, seed: int, hyperparameters: TrainParams, preprocess: PreprocessParams
) -> keras.Model:
    """Seed everything, then build and compile the classifier the way the stage trains it.

    Args:
        variant: ``lstm`` or ``rnn``.
        seed: Passed to ``keras.utils.set_random_seed`` (Python, NumPy and TensorFlow).
        hyperparameters: The effective train values.
        preprocess: Vocabulary size and sequence length.

    Returns:
        The compiled model, with XLA as ``train.jit_compile`` says and
        :data:`~sentiment_rnn.model.STEPS_PER_EXECUTION` batches per call.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(
        variant,
        preprocess.num_words,
        preprocess.maxlen,
        hyperparameters.embedding_dim,
        hyperparameters.units,
        dropout=hyperparameters.dropout,
        recurrent_dropout=hyperparameters.recurrent_dropout,
    )
    return compile_model(
        model,
        hyperparameters.optimizer,
        hyperparameters.learning_rate,
        jit_compile=hyperparameters.jit_compile,
        steps_per_execution=STEPS_PER_EXECUTION,
    )


def fit_model(
    model: keras.Model,
    train: Split,
    validation: Split,
    hyperparameters: TrainParams,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> keras.callbacks.History:
    """Fit on the training split, validating on the validation split after every epoch.

    With ``train.early_stopping`` training stops after ``train.patience`` epochs without a better
    validation accuracy and the best epoch's weights are restored.

    Args:
        model: From :func:`build_compiled_model`.
        train: The training split.
        validation: The validation split (never the test split).
        hyperparameters: Batch size, epochs and early stopping.
        callbacks: More callbacks, run before early stopping's.

    Returns:
        Keras' history.
    """
    import keras

    callbacks = list(callbacks)
    if hyperparameters.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=hyperparameters.patience,
                restore_best_weights=True,
            )
        )
    return model.fit(
        train.x,
        train.y,
        batch_size=hyperparameters.batch_size,
        epochs=hyperparameters.epochs,
        validation_data=(validation.x, validation.y),
        validation_batch_size=PREDICT_BATCH_SIZE,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )


def train_seed(
    variant: Variant,
    seed: int,
    hyperparameters: TrainParams,
    preprocess: PreprocessParams,
    splits: dict[str, Split],
    run_params: dict[str, Any],
    tags: dict[str, str],
) -> SeedResult:
    """Train, evaluate and log one seed in a nested MLflow run of the active parent run.

    Args:
        variant: ``lstm`` or ``rnn``.
        seed: Seeds Python, NumPy and TensorFlow (``keras.utils.set_random_seed``).
        hyperparameters: The effective train values.
        preprocess: Vocabulary size and sequence length.
        splits: ``train``, ``validation`` and ``test``.
        run_params: Parameters logged on the run.
        tags: Tags of the run (the seed is added).

    Returns:
        The seed's metrics, history, model and logged model URI.
    """
    import keras
    import mlflow
    from mlflow.models import infer_signature

    label = f"{variant} seed {seed}"
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    with mlflow.start_run(
        run_name=f"train-{variant}-seed{seed}", nested=True, tags={**tags, "seed": str(seed)}
    ) as run:
        mlflow.log_params({**run_params, "seed": seed})
        datasets = _log_datasets(splits)

        model = build_compiled_model(variant, seed, hyperparameters, preprocess)
        counts = parameter_counts(
            model,
            variant,
            preprocess.num_words,
            hyperparameters.embedding_dim,
            hyperparameters.units,
        )
        mlflow.log_metrics(counts)

        epoch_seconds: list[float] = []
        log.info(
            "%s: fitting %s parameters on %d reviews, validating on %d",
            label,
            f"{counts['params_total']:,}",
            train.size,
            validation.size,
        )
        started = time.perf_counter()
        fitted = fit_model(
            model,
            train,
            validation,
            hyperparameters,
            callbacks=[_epoch_logger(label, hyperparameters.epochs, epoch_seconds)],
        )
        fit_seconds = time.perf_counter() - started
        history = {
            name: [float(value) for value in fitted.history[name]] for name in HISTORY_COLUMNS
        }
        epochs_run = len(history["loss"])
        # Early stopping restored the weights of the best validation epoch; without it the
        # model is the last epoch's.
        if hyperparameters.early_stopping:
            best_epoch = int(np.argmax(history["val_accuracy"]))
        else:
            best_epoch = epochs_run - 1

        probabilities = model.predict(test.x, batch_size=PREDICT_BATCH_SIZE, verbose=0).ravel()
        test_metrics = classification_metrics(test.y, probabilities)
        latency_p50, latency_p95 = prediction_latency_ms(model, test.x)
        metrics = {
            **counts,
            "best_val_accuracy": history["val_accuracy"][best_epoch],
            "best_val_loss": history["val_loss"][best_epoch],
            "train_accuracy": history["accuracy"][best_epoch],
            "best_epoch": float(best_epoch + 1),
            "epochs_run": float(epochs_run),
            "fit_seconds": fit_seconds,
            "seconds_per_epoch": fit_seconds / epochs_run,
            "first_epoch_seconds": epoch_seconds[0],
            "train_reviews_per_second": train.size * epochs_run / fit_seconds,
            "latency_p50_ms": latency_p50,
            "latency_p95_ms": latency_p95,
            **test_metrics,
        }

        matrix = {name: int(test_metrics[name]) for name in ("tn", "fp", "fn", "tp")}
        mlflow.log_dict(matrix, "confusion_matrix.json")
        mlflow.log_figure(
            confusion_figure(test_metrics, f"{label}: test confusion matrix"),
            "confusion_matrix.png",
        )
        mlflow.log_figure(learning_curve_figure(history, label), "learning_curve.png")

        example = test.x[:3]
        info = mlflow.tensorflow.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_on_batch(example)),
            input_example=example,
            # Explicit requirements: inferring them loads the model again in a subprocess.
            pip_requirements=[
                f"tensorflow=={_version('tensorflow')}",
                f"keras=={keras.__version__}",
            ],
        )
        # Linked to the logged model (and the test metrics to the test dataset), MLflow shows
        # them on the model's page too.
        mlflow.log_metrics(
            {name: value for name, value in metrics.items() if name not in test_metrics},
            model_id=info.model_id,
        )
        mlflow.log_metrics(test_metrics, model_id=info.model_id, dataset=datasets["test"])
        log.info(
            "%s: test accuracy %.4f, ROC AUC %.4f, val accuracy %.4f (epoch %d of %d), "
            "%.1f s per epoch, latency p50 %.2f ms",
            label,
            metrics["test_accuracy"],
            metrics["test_roc_auc"],
            metrics["best_val_accuracy"],
            best_epoch + 1,
            epochs_run,
            metrics["seconds_per_epoch"],
            latency_p50,
        )
        return SeedResult(seed, run.info.run_id, info.model_uri, metrics, history, model)


def _version(distribution: str) -> str:
    """An installed distribution's version."""
    from importlib.metadata import version

    return version(distribution)


def _write_outputs(
    variant: Variant,
    best: SeedResult,
    summary: dict[str, float],
    history: dict[str, list[float]],
    run_record: dict[str, Any],
) -> None:
    """Write models/<variant>/, metrics/train-<variant>.json and plots/train-<variant>.csv."""
    model_dir = paths.MODELS_DIR / variant
    model_dir.mkdir(parents=True, exist_ok=True)
    # Keras insists on the .keras suffix, so the temporary sibling keeps it.
    temporary = model_dir / f".model.tmp-{os.getpid()}.keras"
    try:
        best.model.save(temporary)
        os.replace(temporary, model_dir / "model.keras")
    finally:
        temporary.unlink(missing_ok=True)
    vocabulary = paths.PROCESSED_DIR / "vocabulary.json"
    paths.write_atomically(model_dir / "vocabulary.json", vocabulary.read_bytes())
    paths.write_atomically(model_dir / "run.json", json.dumps(run_record, indent=2) + "\n")
    paths.write_atomically(
        paths.METRICS_DIR / f"train-{variant}.json", json.dumps(summary, indent=2) + "\n"
    )
    paths.write_atomically(paths.PLOTS_DIR / f"train-{variant}.csv", history_csv(history))


def main(variant: Variant, params: Params) -> dict[str, float]:
    """Train ``variant`` over ``params.train.seeds``, log to MLflow and write the stage outputs.

    Paths are relative to the current directory, the project root when DVC runs the stage.

    Args:
        variant: ``lstm`` or ``rnn``.
        params: All of ``params.yaml``.

    Returns:
        The summary written to ``metrics/train-<variant>.json``.

    Raises:
        UserError: If the processed data is missing or does not match ``params.yaml``, or the
            tuned values are unusable.
    """
    import keras
    import mlflow

    # Keras' progress bars (MLflow's input-example check calls predict) garble DVC's log; our
    # per-epoch log lines report progress instead.
    keras.utils.disable_interactive_logging()
    configure_threads(params.train.threads)
    preprocess = params.preprocess
    splits = {name: load_split(name, preprocess) for name in paths.SPLITS}
    vocabulary = paths.PROCESSED_DIR / "vocabulary.json"
    if not vocabulary.is_file():
        raise UserError(f"{vocabulary}: not found; run `dvc repro preprocess` first")
    hyperparameters, tuned = resolve_hyperparameters(params.train, variant)

    experiment_id = tracking.configure(params.mlflow.experiment)
    tags = {
        "variant": variant,
        "stage": "train",
        "git_commit": tracking.git_commit(),
        "data_checksum": directory_md5(paths.PROCESSED_DIR),
    }
    # Set by DVC for `dvc exp run`, so a run can be traced back to its experiment.
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(variable):
            tags[variable.lower()] = os.environ[variable]
    run_params: dict[str, Any] = {
        "variant": variant,
        **hyperparameters.model_dump(),
        "steps_per_execution": STEPS_PER_EXECUTION,
        "tuned": bool(tuned),
        "tuned_keys": ",".join(sorted(tuned)) or "none",
        "num_words": preprocess.num_words,
        "maxlen": preprocess.maxlen,
        "validation_fraction": preprocess.validation_fraction,
        "preprocess_seed": preprocess.seed,
        **{f"{name}_reviews": split.size for name, split in splits.items()},
    }
    seeds = hyperparameters.seeds
    log.info(
        "training %s over seeds %s: %d training, %d validation, %d test reviews",
        variant,
        seeds,
        splits["train"].size,
        splits["validation"].size,
        splits["test"].size,
    )

    with mlflow.start_run(run_name=f"train-{variant}", tags=tags) as parent:
        mlflow.log_params({**run_params, "seeds": ",".join(map(str, seeds))})
        _log_datasets(splits)
        results: list[SeedResult] = []
        best: SeedResult | None = None
        for seed in seeds:
            result = train_seed(
                variant, seed, hyperparameters, preprocess, splits, run_params, tags
            )
            results.append(result)
            # Keep only the best model in memory; a tie keeps the earlier seed.
            accuracy = result.metrics["best_val_accuracy"]
            if best is None or accuracy > best.metrics["best_val_accuracy"]:
                if best is not None:
                    best.model = None
                best = result
            else:
                result.model = None
        assert best is not None and best.model is not None  # params require one seed or more

        summary = summarize(results)
        history = mean_history(results)
        mlflow.log_metrics(summary)
        for epoch in range(len(history["loss"])):
            mlflow.log_metrics(
                {name: history[name][epoch] for name in HISTORY_COLUMNS}, step=epoch + 1
            )
        mlflow.log_figure(
            learning_curve_figure(history, f"{variant}: mean over seeds {seeds}"),
            "learning_curve.png",
        )
        mlflow.set_tags({"best_run_id": best.run_id, "best_seed": str(best.seed)})
        run_record = {
            "variant": variant,
            "experiment_id": experiment_id,
            "parent_run_id": parent.info.run_id,
            "best_run_id": best.run_id,
            "best_seed": best.seed,
            "model_uri": best.model_uri,
            "hyperparameters": hyperparameters.model_dump(),
            "tuned": bool(tuned),
            "tuned_keys": sorted(tuned),
            "maxlen": preprocess.maxlen,
            "num_words": preprocess.num_words,
            "data_checksum": tags["data_checksum"],
        }
        mlflow.log_dict(run_record, "run.json")
        _write_outputs(variant, best, summary, history, run_record)

    log.info(
        "train %s: test accuracy %.4f ± %.4f over %d seed(s), %s parameters, %.1f s per epoch; "
        "best seed %d -> %s",
        variant,
        summary["test_accuracy_mean"],
        summary["test_accuracy_std"],
        len(seeds),
        f"{int(summary['params_total']):,}",
        summary["seconds_per_epoch_mean"],
        best.seed,
        paths.MODELS_DIR / variant / "model.keras",
    )
    return summary


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """``sentiment-rnn train --variant V``."""
    main(args.variant, params)
    return 0
