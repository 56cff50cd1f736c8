"""Stage ``tune``: search one variant's hyperparameters with Optuna, every trial in MLflow.

Reads ``data/processed/{train,validation}.npz`` and ``vocabulary.json``; writes
``tuning/<variant>/best_params.json`` (the keys train overrides when ``train.use_tuned`` is true)
and ``metrics/tune-<variant>.json``. Run it with ``dvc repro tune@lstm`` or
``sentiment-rnn tune --variant lstm``.

Each trial trains on a stratified, seeded ``tune.train_fraction`` of the training split for
``tune.epochs`` epochs and scores its best validation accuracy on the whole validation split. A
seeded TPE sampler proposes the values from ``tune.space``; the textbook configuration (the
``train`` section) is the study's first trial, so the best trial is never worse than it on the
same budget. A median pruner stops a trial after an epoch whose validation accuracy is below
the median of the finished trials at that epoch. Trials compile with XLA when
``train.jit_compile`` is true: the compilation costs seconds per trial, but with one input shape
per trial (whole batches, validation in one batch) a 3-epoch LSTM trial took 15-23 s with it
and 25-32 s without on the 2-core machine.

MLflow gets a parent run ``tune-<variant>`` per study (tags variant, stage=tune, study_name,
storage) with a child run per trial: its values, per-epoch metrics with ``step`` the epoch, its
state, duration and parameter count. The parent ends with the best value and values, the
optimisation history, the per-epoch curves and the parameter importances.

The study lives in Optuna storage, a journal file ``optuna/journal.log`` under the store root by
default, or the database URL in ``$SENTIMENT_RNN_OPTUNA_STORAGE`` or ``tune.storage``. Its name
is derived from the variant, the search space, the budget per trial and a checksum of the data,
so running the stage again resumes the same study and runs only the trials still missing.

Budget rules (the README repeats them):

* ``tune.n_trials`` counts COMPLETE and PRUNED trials, over every worker and every run. A FAIL
  (a diverged loss, an exception, a killed worker) does not count and is replaced, up to
  ``n_trials`` failures per run, after which the run stops.
* A trial left RUNNING by a process that died is marked FAIL when the next worker starts (and
  after each of its trials), and its parameters are queued again.
* Several workers may run at once on the same study; a worker does not start a trial once the
  finished and running trials of all workers reach ``n_trials``.
* ``tune.timeout_s``: no trial starts after that many seconds; the running one finishes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sentiment_rnn import paths, tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.model import (
    STEPS_PER_EXECUTION,
    build_model,
    compile_model,
    configure_threads,
)
from sentiment_rnn.params import (
    TUNABLE_KEYS,
    Params,
    SearchSpace,
    TrainParams,
    TuneParams,
    Variant,
)
from sentiment_rnn.text import Vocabulary

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

STORAGE_ENV = "SENTIMENT_RNN_OPTUNA_STORAGE"
JOURNAL_PATH = Path("optuna") / "journal.log"

# Validation needs no gradients; up to this many reviews are scored in a single batch.
MAX_VALIDATION_BATCH = 8192
# A RUNNING trial whose worker is on another host, or whose process id may have been reused, is
# taken as abandoned when it has not reported an epoch for this long. Epochs of a tuning trial
# take seconds to a minute here, so this only fires for a worker that is really gone.
STALE_AFTER_S = 900.0
# How long a worker that joined a study just created by another waits for its MLflow parent run.
PARENT_RUN_WAIT_S = 30.0

# Trial and study attributes this module writes.
ATTR_HOST, ATTR_PID, ATTR_HEARTBEAT = "worker_host", "worker_pid", "heartbeat"
ATTR_RUN_ID, ATTR_PARENT_RUN_ID = "mlflow_run_id", "mlflow_parent_run_id"
ATTR_TEXTBOOK, ATTR_RETRY_OF, ATTR_FAIL_REASON = "textbook", "retry_of", "fail_reason"


@dataclass(frozen=True)
class TuneData:
    """The arrays a trial trains and validates on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray
    num_words: int
    checksum: str

    @property
    def maxlen(self) -> int:
        """Sequence length of the encoded reviews."""
        return int(self.x_train.shape[1])


@dataclass
class TuneResult:
    """What :func:`main` did, for the CLI summary and the tests."""

    study_name: str
    storage: str
    best_params: dict[str, Any]
    metrics: dict[str, Any]
    parent_run_id: str
    trials_run: int = 0
    retried: list[int] = field(default_factory=list)


# Storage


def storage_location(tune: TuneParams) -> str:
    """The Optuna storage: ``$SENTIMENT_RNN_OPTUNA_STORAGE``, else ``tune.storage``, else a journal.

    The environment wins so that a database password never has to be written into params.yaml.
    A value without ``://`` is a journal file path, relative to the store root.
    """
    location = os.environ.get(STORAGE_ENV) or tune.storage
    if not location:
        return str(paths.store_root() / JOURNAL_PATH)
    if "://" in location:
        return location
    return str(paths.store_root() / location)


def redact(location: str) -> str:
    """The storage location with any password masked, fit for logs and tags."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", location)


def open_storage(location: str) -> optuna.storages.BaseStorage:
    """Open the journal file or the database behind ``location``.

    Raises:
        UserError: If the database driver is missing or the database cannot be reached.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" not in location:
        journal = Path(location)
        journal.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    from sqlalchemy.exc import SQLAlchemyError

    shown = redact(location)
    try:
        return optuna.storages.RDBStorage(location)
    except ImportError as exc:
        # Optuna re-raises the driver's ModuleNotFoundError as a plain ImportError.
        driver = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "?"
        raise UserError(
            f"tune.storage = {shown}: the database driver {driver!r} is not installed; "
            "pip install it (psycopg2-binary for PostgreSQL, PyMySQL for MySQL)"
        ) from None
    except (SQLAlchemyError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UserError(
            f"tune.storage = {shown}: cannot open the database ({reason}); check the URL "
            f"(or ${STORAGE_ENV}) and that the server is running"
        ) from None


# Data


def load_data(train_fraction: float, seed: int) -> TuneData:
    """Read the processed splits and keep a stratified ``train_fraction`` of the training split.

    Raises:
        UserError: If preprocess has not written its outputs.
    """
    arrays = {}
    for split in ("train", "validation"):
        path = paths.split_path(split)
        if not path.is_file():
            raise UserError(
                f"{path}: not found; run `dvc repro preprocess` (or `sentiment-rnn preprocess`)"
            )
        with np.load(path, allow_pickle=False) as archive:
            arrays[split] = (archive["x"].astype(np.int32), archive["y"].astype(np.int8))
    vocabulary_path = paths.PROCESSED_DIR / "vocabulary.json"
    if not vocabulary_path.is_file():
        raise UserError(f"{vocabulary_path}: not found; run `dvc repro preprocess`")
    num_words = Vocabulary.load(vocabulary_path).num_words

    x_train, y_train = arrays["train"]
    kept = stratified_subset(y_train, train_fraction, seed)
    return TuneData(
        x_train=x_train[kept],
        y_train=y_train[kept],
        x_validation=arrays["validation"][0],
        y_validation=arrays["validation"][1],
        num_words=num_words,
        checksum=data_checksum([paths.split_path("train"), paths.split_path("validation")]),
    )


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded sample of ``fraction`` of each label, in a seeded random order.

    The order is random so that cutting the tail (see :func:`whole_batches`) removes random
    reviews, not the last label of a sorted split.

    Args:
        labels: One label per review.
        fraction: Share of each label kept; 1 keeps everything.
        seed: Seed of the sample.

    Returns:
        Indices into ``labels``.
    """
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(len(members) * fraction))
        kept.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return rng.permutation(np.concatenate(kept))


def whole_batches(count: int, batch_size: int) -> int:
    """How many reviews to train on so that every batch is full.

    With XLA every new input shape is a new compilation, seconds each; a smaller last batch would
    cost one more per trial, more than the few reviews dropped are worth.
    """
    return count - count % batch_size if count >= batch_size else count


def validation_batch_size(count: int) -> int:
    """Validate in one batch (one compiled shape) unless the split is too large for memory."""
    return count if count <= MAX_VALIDATION_BATCH else 1024


def data_checksum(files: list[Path]) -> str:
    """SHA-256 over the files' bytes, in order."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# Study definition


def textbook_params(train: TrainParams, space: SearchSpace) -> dict[str, Any]:
    """The ``train`` section's values, the study's first trial.

    Raises:
        UserError: If a textbook value is not one of the search space's choices (Optuna cannot
            record a categorical value outside its choices). A float outside its range is only
            logged: Optuna records it with a warning.
    """
    values = {name: getattr(train, name) for name in TUNABLE_KEYS}
    for name in ("optimizer", "batch_size", "units", "embedding_dim"):
        choices = getattr(space, name)
        if values[name] not in choices:
            raise UserError(
                f"params.yaml: tune.space.{name} = {choices} lacks train.{name} = "
                f"{values[name]!r}; add it (the textbook configuration is the first trial)"
            )
    for name in ("learning_rate", "dropout", "recurrent_dropout"):
        bounds = getattr(space, name)
        if not bounds.low <= values[name] <= bounds.high:
            log.warning(
                "train.%s = %s lies outside tune.space.%s [%s, %s]; the textbook trial uses it",
                name,
                values[name],
                name,
                bounds.low,
                bounds.high,
            )
    return values


def study_name(variant: Variant, tune: TuneParams, textbook: dict[str, Any], checksum: str) -> str:
    """A name that changes whenever the objective does, so a re-run resumes only its own study.

    It covers the variant, the search space, the textbook trial, the budget of one trial (epochs,
    training fraction, seed, pruner) and the data checksum; not ``n_trials``, ``timeout_s`` or the
    storage, so raising the trial budget continues the same study.
    """
    definition = {
        "variant": variant,
        "space": tune.space.model_dump(mode="json"),
        "textbook": textbook,
        "epochs": tune.epochs,
        "train_fraction": tune.train_fraction,
        "seed": tune.seed,
        "pruner": [tune.pruner_startup_trials, tune.pruner_warmup_epochs],
        "data": checksum,
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode("utf-8"))
    return f"tune-{variant}-{digest.hexdigest()[:12]}"


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw one configuration; a one-choice list is recorded but not searched."""
    return {
        "learning_rate": trial.suggest_float(
            "learning_rate", space.learning_rate.low, space.learning_rate.high, log=True
        ),
        "optimizer": trial.suggest_categorical("optimizer", space.optimizer),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
        "dropout": trial.suggest_float("dropout", space.dropout.low, space.dropout.high),
        "recurrent_dropout": trial.suggest_float(
            "recurrent_dropout", space.recurrent_dropout.low, space.recurrent_dropout.high
        ),
        "units": trial.suggest_categorical("units", space.units),
        "embedding_dim": trial.suggest_categorical("embedding_dim", space.embedding_dim),
    }


def _open_study(
    name: str, storage: optuna.storages.BaseStorage, tune: TuneParams
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it if it exists; also says whether this call created it.

    Only the creator enqueues the textbook trial and opens the MLflow parent run, so two
    workers started at once do not both do it (the storage lets exactly one create succeed).
    """
    import optuna

    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
    )
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction="maximize", pruner=pruner
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
        created = False
    # A resumed or second worker must not replay the creator's random draws: same seed, same
    # first configurations. The creator alone keeps tune.seed, so a single run is reproducible.
    seed = tune.seed
    if not created:
        entropy = [tune.seed, len(study.get_trials(deepcopy=False)), os.getpid()]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, min(5, tune.n_trials // 3))
    )
    return study, created


# Worker liveness


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(trial: optuna.trial.FrozenTrial, now: float | None = None) -> str | None:
    """Why a RUNNING trial is abandoned by its worker, or None while the worker looks alive.

    Every trial records its worker's host and process id when it starts and a heartbeat at each
    epoch. On the same host a dead process id settles it; elsewhere, or when the id may have
    been reused, a heartbeat older than :data:`STALE_AFTER_S` does.
    """
    now = time.time() if now is None else now
    attrs = trial.user_attrs
    host, pid = attrs.get(ATTR_HOST), attrs.get(ATTR_PID)
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            # This process runs one trial at a time and checks only between trials.
            return f"left RUNNING by an earlier process with id {pid}"
        if not _process_alive(pid):
            return f"its worker (process {pid} on {host}) is gone"
    last = attrs.get(ATTR_HEARTBEAT)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    if last is not None and now - float(last) > STALE_AFTER_S:
        return f"no heartbeat from its worker for {now - float(last):.0f} s"
    return None


def fail_stale_trials(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    client: MlflowClient | None = None,
) -> list[int]:
    """Mark trials abandoned by dead workers FAIL and queue their parameters again.

    JournalStorage has no heartbeat of its own (only RDBStorage does), so this module keeps one in
    trial attributes and works the same on both storages.

    Returns:
        The numbers of the trials failed here.
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, ATTR_FAIL_REASON, reason)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first and queued the retry
        failed.append(trial.number)
        log.warning("trial %d marked FAIL: %s", trial.number, reason)
        if set(trial.params) == set(TUNABLE_KEYS):
            retry_attrs: dict[str, Any] = {ATTR_RETRY_OF: trial.number}
            if trial.user_attrs.get(ATTR_TEXTBOOK):
                retry_attrs[ATTR_TEXTBOOK] = True
            study.enqueue_trial(dict(trial.params), user_attrs=retry_attrs)
            log.info("trial %d: its parameters are queued again", trial.number)
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        if client is not None and run_id:
            _terminate_quietly(client, run_id, "FAILED", {"trial_state": "failed"})
    return failed


def _budget_taken(study: optuna.Study, before: int | None = None) -> int:
    """Trials that count against ``n_trials``: finished ones plus those running in live workers.

    Args:
        study: The study.
        before: Count only trials numbered below this one.
    """
    from optuna.trial import TrialState

    now = time.time()
    taken = 0
    for trial in study.get_trials(deepcopy=False):
        if before is not None and trial.number >= before:
            continue
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            trial.state == TrialState.RUNNING and stale_reason(trial, now) is None
        ):
            taken += 1
    return taken


# MLflow


def _terminate_quietly(
    client: MlflowClient, run_id: str, status: str, tags: dict[str, str] | None = None
) -> None:
    """End a run, logging rather than raising when the tracking store refuses (best effort)."""
    from mlflow.exceptions import MlflowException

    try:
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status)
    except MlflowException as exc:
        log.warning("MLflow run %s could not be ended: %s", run_id, exc)


class _Tracker:
    """The study's MLflow parent run and a nested child run per trial."""

    def __init__(self, experiment_id: str, variant: Variant, study_name: str, storage: str):
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.experiment_id = experiment_id
        self.variant = variant
        self.study_name = study_name
        self.storage = storage
        self.parent_run_id = ""

    def _run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.experiment_id == self.experiment_id

    def open_parent(self, study: optuna.Study, created: bool, definition: dict[str, Any]) -> str:
        """Reuse the study's parent run, or create it; every worker logs under the same one.

        The run id is kept in the study's attributes. A worker that did not create the study
        waits briefly for the creator to record it, then creates one itself (the creator died,
        or the study was made against another tracking store).
        """
        from mlflow.entities import Param

        deadline = time.monotonic() + (0.0 if created else PARENT_RUN_WAIT_S)
        while True:
            run_id = study.user_attrs.get(ATTR_PARENT_RUN_ID)
            if run_id and self._run_exists(run_id):
                self.client.update_run(run_id, status="RUNNING")
                log.info("MLflow: resuming parent run %s of study %s", run_id, self.study_name)
                self.parent_run_id = run_id
                return run_id
            if run_id or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        tags = {
            "variant": self.variant,
            "stage": "tune",
            "study_name": self.study_name,
            "storage": self.storage,
            "mlflow.source.git.commit": tracking.git_commit(),
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"tune-{self.variant}")
        run_id = run.info.run_id
        self.client.log_batch(
            run_id, params=[Param(key, str(value)) for key, value in definition.items()]
        )
        study.set_user_attr(ATTR_PARENT_RUN_ID, run_id)
        log.info("MLflow: parent run %s for study %s", run_id, self.study_name)
        self.parent_run_id = run_id
        return run_id

    def start_trial(self, trial: optuna.Trial, values: dict[str, Any]) -> str:
        """Open the trial's child run and log its parameters."""
        from mlflow.entities import Param

        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "variant": self.variant,
            "stage": "tune",
            "study_name": self.study_name,
            "trial_number": str(trial.number),
            "textbook": str(bool(trial.user_attrs.get(ATTR_TEXTBOOK))).lower(),
        }
        run = self.client.create_run(
            self.experiment_id, tags=tags, run_name=f"tune-{self.variant}-trial{trial.number}"
        )
        run_id = run.info.run_id
        self.client.log_batch(
            run_id, params=[Param(key, str(value)) for key, value in values.items()]
        )
        return run_id

    def log_epoch(self, run_id: str, epoch: int, logs: dict[str, float]) -> None:
        """Per-epoch metrics of a trial, with ``step`` the epoch number (from 1)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(name, float(logs[name]), timestamp, epoch)
            for name in ("val_accuracy", "val_loss", "accuracy", "loss")
            if name in logs and math.isfinite(float(logs[name]))
        ]
        self.client.log_batch(run_id, metrics=metrics)

    def end_trial(self, run_id: str, state: str, numbers: dict[str, float]) -> None:
        """Close a child run with its final state (complete, pruned, failed or killed)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), timestamp, 0)
            for name, value in numbers.items()
            if math.isfinite(float(value))
        ]
        self.client.log_batch(run_id, metrics=metrics)
        status = {"complete": "FINISHED", "pruned": "FINISHED", "killed": "KILLED"}
        _terminate_quietly(self.client, run_id, status.get(state, "FAILED"), {"trial_state": state})

    def finish(self, study: optuna.Study, metrics: dict[str, Any], best: dict[str, Any]) -> None:
        """Log the study's summary, best values and figures on the parent run and close it."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        numbers = [
            Metric(name, float(value), timestamp, 0)
            for name, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(float(value))
        ]
        self.client.log_batch(self.parent_run_id, metrics=numbers)
        # Tags, not params: a later worker or resumed run may find a better trial, and MLflow
        # params cannot change once logged.
        for name, value in best.items():
            self.client.set_tag(self.parent_run_id, f"best.{name}", str(value))
        self.client.log_dict(self.parent_run_id, best, "best_params.json")
        figures = _study_figures(study)
        import matplotlib.pyplot as plt

        for artifact, figure in figures.items():
            self.client.log_figure(self.parent_run_id, figure, artifact)
            plt.close(figure)
        self.client.set_terminated(self.parent_run_id, "FINISHED")


def _study_figures(study: optuna.Study) -> dict[str, Any]:
    """Optimisation history, per-epoch curves and, when they mean something, importances."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    figures: dict[str, Any] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        # The matplotlib backend of optuna.visualization is marked experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures["optimization_history.png"] = optuna_plots.plot_optimization_history(study).figure
        figures["intermediate_values.png"] = optuna_plots.plot_intermediate_values(study).figure
        # Importances need two complete trials that differ in some searched parameter.
        varied = {
            name
            for name in TUNABLE_KEYS
            if len({repr(trial.params.get(name)) for trial in complete}) > 1
        }
        if len(complete) >= 2 and varied:
            try:
                axes = optuna_plots.plot_param_importances(study)
            except (ValueError, RuntimeError) as exc:
                log.info("parameter importances skipped: %s", exc)
            else:
                figures["param_importances.png"] = axes.figure
        else:
            log.info("parameter importances skipped: fewer than 2 complete, varied trials")
    return figures


# The objective


def _epoch_reporter(trial: optuna.Trial, tracker: _Tracker, run_id: str, epochs: int) -> Any:
    """A Keras callback that reports each epoch to the trial, MLflow and the log, and prunes."""
    import keras

    class EpochReporter(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.val_accuracy: list[float] = []
            self.diverged_at: int | None = None
            self.pruned_at: int | None = None
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            step = epoch + 1
            values = [float(logs.get(name, math.nan)) for name in ("loss", "val_accuracy")]
            if not all(math.isfinite(value) for value in values):
                self.diverged_at = step
                self.model.stop_training = True
                return
            self.val_accuracy.append(values[1])
            tracker.log_epoch(run_id, step, logs)
            trial.report(values[1], step)
            trial.set_user_attr(ATTR_HEARTBEAT, time.time())
            log.info(
                "trial %d epoch %d/%d: val_accuracy %.4f, val_loss %.4f (%.1f s)",
                trial.number,
                step,
                epochs,
                values[1],
                float(logs.get("val_loss", math.nan)),
                time.monotonic() - self.started,
            )
            if step < epochs and trial.should_prune():
                self.pruned_at = step
                self.model.stop_training = True

    return EpochReporter()


class Objective:
    """Train one configuration and return its best validation accuracy.

    Returns NaN (Optuna records FAIL) for a diverged loss, raises ``optuna.TrialPruned`` when the
    pruner stops the trial, and fails a trial that a race with another worker pushed over the
    budget.
    """

    def __init__(
        self,
        variant: Variant,
        tune: TuneParams,
        data: TuneData,
        tracker: _Tracker,
        jit_compile: bool,
    ) -> None:
        self.variant = variant
        self.tune = tune
        self.data = data
        self.tracker = tracker
        self.jit_compile = jit_compile

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial (the Optuna objective)."""
        trial.set_user_attr(ATTR_HOST, socket.gethostname())
        trial.set_user_attr(ATTR_PID, os.getpid())
        trial.set_user_attr(ATTR_HEARTBEAT, time.time())
        if _budget_taken(trial.study, before=trial.number) >= self.tune.n_trials:
            # Two workers asked for the last slot at the same moment; the later one gives it up.
            trial.set_user_attr(ATTR_FAIL_REASON, "over budget: another worker took the slot")
            log.info("trial %d: not run, the study already has its trials", trial.number)
            return math.nan

        values = suggest(trial, self.tune.space)
        run_id = self.tracker.start_trial(trial, values)
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        notes = []
        if trial.user_attrs.get(ATTR_TEXTBOOK):
            notes.append("textbook")
        if ATTR_RETRY_OF in trial.user_attrs:
            notes.append(f"retry of trial {trial.user_attrs[ATTR_RETRY_OF]}")
        log.info(
            "trial %d%s: %s",
            trial.number,
            f" ({', '.join(notes)})" if notes else "",
            ", ".join(f"{name}={_short(value)}" for name, value in values.items()),
        )
        started = time.monotonic()
        outcome = _Outcome("killed")
        try:
            outcome = self._fit(trial, values, run_id)
        except Exception as exc:
            outcome = _Outcome("failed", numbers=outcome.numbers)
            reason = str(exc).strip().splitlines()[-1:] or [""]
            trial.set_user_attr(ATTR_FAIL_REASON, f"{type(exc).__name__}: {reason[0][:300]}")
            raise
        finally:
            outcome.numbers["duration_s"] = time.monotonic() - started
            self.tracker.end_trial(run_id, outcome.state, outcome.numbers)
        if outcome.state == "pruned":
            import optuna

            raise optuna.TrialPruned(outcome.message)
        return outcome.value

    def _fit(self, trial: optuna.Trial, values: dict[str, Any], run_id: str) -> _Outcome:
        import keras

        keras.backend.clear_session()
        # One seed for every trial: differences between trials come from their values, not
        # from a luckier initialisation.
        keras.utils.set_random_seed(self.tune.seed)
        model = build_model(
            self.variant,
            self.data.num_words,
            self.data.maxlen,
            values["embedding_dim"],
            values["units"],
            values["dropout"],
            values["recurrent_dropout"],
        )
        compile_model(
            model,
            values["optimizer"],
            values["learning_rate"],
            jit_compile=self.jit_compile,
            steps_per_execution=STEPS_PER_EXECUTION,
        )
        reporter = _epoch_reporter(trial, self.tracker, run_id, self.tune.epochs)
        train_count = whole_batches(len(self.data.y_train), values["batch_size"])
        model.fit(
            self.data.x_train[:train_count],
            self.data.y_train[:train_count],
            batch_size=values["batch_size"],
            epochs=self.tune.epochs,
            validation_data=(self.data.x_validation, self.data.y_validation),
            validation_batch_size=validation_batch_size(len(self.data.y_validation)),
            callbacks=[keras.callbacks.TerminateOnNaN(), reporter],
            verbose=0,
        )
        numbers = {
            "params_total": float(model.count_params()),
            "epochs_run": float(len(reporter.val_accuracy)),
        }
        if reporter.val_accuracy:
            numbers["best_val_accuracy"] = max(reporter.val_accuracy)
        if reporter.diverged_at is not None:
            reason = f"diverged: loss not finite in epoch {reporter.diverged_at}"
            trial.set_user_attr(ATTR_FAIL_REASON, reason)
            log.warning("trial %d %s", trial.number, reason)
            # Optuna records a NaN objective as FAIL, with a one-line warning, no traceback.
            return _Outcome("failed", math.nan, numbers)
        if reporter.pruned_at is not None:
            message = (
                f"val_accuracy {reporter.val_accuracy[-1]:.4f} below the median at epoch "
                f"{reporter.pruned_at}"
            )
            log.info("trial %d pruned: %s", trial.number, message)
            return _Outcome("pruned", math.nan, numbers, message)
        return _Outcome("complete", max(reporter.val_accuracy), numbers)


@dataclass
class _Outcome:
    """How a trial's training ended."""

    state: str
    value: float = math.nan
    numbers: dict[str, float] = field(default_factory=dict)
    message: str = ""


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# The stage


class _FailureLimit:
    """Count this worker's trials, and stop it once ``limit`` of them have failed.

    Failures do not use up the budget, so without a limit a search space where every trial
    diverges would never end.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.trials = 0
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        self.trials += 1
        if trial.state != TrialState.FAIL:
            return
        self.failures += 1
        if self.failures >= self.limit:
            log.warning("%d trials failed in this run; stopping the study", self.failures)
            study.stop()


def summarize(study: optuna.Study, tune: TuneParams, wall_seconds: float) -> dict[str, Any]:
    """The numbers of ``metrics/tune-<variant>.json``, over every trial of the study.

    ``epochs_saved`` is what pruning saved: the epochs the finished trials would have run without
    it, less those they ran.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_state = {
        state: [trial for trial in trials if trial.state == state]
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    complete = by_state[TrialState.COMPLETE]
    finished = complete + by_state[TrialState.PRUNED]
    epochs_run = sum(
        tune.epochs if trial.state == TrialState.COMPLETE else len(trial.intermediate_values)
        for trial in finished
    )
    epochs_unpruned = len(finished) * tune.epochs
    durations = [trial.duration.total_seconds() for trial in finished if trial.duration]
    metrics: dict[str, Any] = {
        "best_val_accuracy": study.best_value if complete else math.nan,
        "best_trial": study.best_trial.number if complete else -1,
        "trials_complete": len(complete),
        "trials_pruned": len(by_state[TrialState.PRUNED]),
        "trials_failed": len(by_state[TrialState.FAIL]),
        "trials_finished": len(finished),
        "n_trials": tune.n_trials,
        "epochs_per_trial": tune.epochs,
        "epochs_run": epochs_run,
        "epochs_unpruned": epochs_unpruned,
        "epochs_saved": epochs_unpruned - epochs_run,
        "epochs_saved_fraction": round(1 - epochs_run / epochs_unpruned, 4)
        if epochs_unpruned
        else 0.0,
        "trial_seconds_total": round(sum(durations), 1),
        "wall_seconds": round(wall_seconds, 1),
    }
    textbook = [trial.value for trial in complete if trial.user_attrs.get(ATTR_TEXTBOOK)]
    if textbook and complete:
        metrics["textbook_val_accuracy"] = max(textbook)
        metrics["gain_over_textbook"] = round(study.best_value - max(textbook), 4)
    return metrics


class _ExpectedRetracing(logging.Filter):
    """Drop TensorFlow's retracing warning: every trial builds a new model, so it is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _route_logs() -> None:
    """Send Optuna's warnings through our logging set-up instead of its own stderr handler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    tensorflow_log = logging.getLogger("tensorflow")
    if not any(isinstance(item, _ExpectedRetracing) for item in tensorflow_log.filters):
        tensorflow_log.addFilter(_ExpectedRetracing())


def main(variant: Variant, params: Params) -> TuneResult:
    """Run (or resume) the variant's study and write its best values and metrics.

    Args:
        variant: ``lstm`` or ``rnn``.
        params: All of ``params.yaml``; reads ``tune``, ``train`` (the textbook trial,
            ``jit_compile`` and ``threads``) and ``mlflow``.

    Returns:
        The study's name, storage, best values and metrics.

    Raises:
        UserError: If the data are missing, the storage cannot be opened, the textbook
            configuration is not in the search space, or no trial completed.
    """
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    started = time.monotonic()
    tune = params.tune
    _route_logs()
    configure_threads(params.train.threads)
    data = load_data(tune.train_fraction, tune.seed)
    textbook = textbook_params(params.train, tune.space)
    name = study_name(variant, tune, textbook, data.checksum)
    location = storage_location(tune)
    shown = redact(location)
    experiment_id = tracking.configure(params.mlflow.experiment)

    storage = open_storage(location)
    study, created = _open_study(name, storage, tune)
    definition = {
        "epochs": tune.epochs,
        "train_fraction": tune.train_fraction,
        "train_reviews": len(data.y_train),
        "validation_reviews": len(data.y_validation),
        "seed": tune.seed,
        "data_checksum": data.checksum,
        "pruner": f"median, {tune.pruner_startup_trials} startup trials, "
        f"from epoch {tune.pruner_warmup_epochs}",
        **{f"space.{key}": value for key, value in tune.space.model_dump(mode="json").items()},
    }
    tracker = _Tracker(experiment_id, variant, name, shown)
    # The creator records the parent run first: a second worker started at once waits for it.
    tracker.open_parent(study, created, definition)
    if created:
        study.set_user_attr("variant", variant)
        study.set_user_attr("data_checksum", data.checksum)
        study.enqueue_trial(textbook, user_attrs={ATTR_TEXTBOOK: True})
    log.info(
        "tune %s: %s study %s in %s; %d trials of %d epochs on %d training reviews "
        "(%.0f%%), %d validation reviews",
        variant,
        "new" if created else "resuming",
        name,
        shown,
        tune.n_trials,
        tune.epochs,
        len(data.y_train),
        100 * tune.train_fraction,
        len(data.y_validation),
    )

    retried = fail_stale_trials(study, storage, tracker.client)
    counter = _FailureLimit(tune.n_trials)
    taken = _budget_taken(study)
    if taken >= tune.n_trials:
        log.info("study %s already has %d finished or running trials; none to add", name, taken)
    else:

        def fail_stale(current: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
            fail_stale_trials(current, storage, tracker.client)

        objective = Objective(variant, tune, data, tracker, params.train.jit_compile)
        try:
            study.optimize(
                objective,
                timeout=tune.timeout_s,
                catch=(Exception,),
                callbacks=[
                    fail_stale,
                    # Running trials count too, so concurrent workers stop at the total.
                    MaxTrialsCallback(
                        tune.n_trials,
                        states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING),
                    ),
                    counter,
                ],
                gc_after_trial=True,
            )
        except BaseException:
            _terminate_quietly(tracker.client, tracker.parent_run_id, "KILLED")
            raise

    metrics = summarize(study, tune, time.monotonic() - started)
    if not metrics["trials_complete"]:
        _terminate_quietly(tracker.client, tracker.parent_run_id, "FAILED")
        raise UserError(
            f"tune {variant}: no trial of study {name} completed ({metrics['trials_failed']} "
            f"failed, {metrics['trials_pruned']} pruned); see the warnings above, then check "
            "tune.space (a learning rate too high diverges) and the data"
        )
    best_trial = study.best_trial
    best = {name: _plain(best_trial.params[name]) for name in TUNABLE_KEYS}
    paths.write_atomically(
        paths.TUNING_DIR / variant / "best_params.json", json.dumps(best, indent=2) + "\n"
    )
    paths.write_atomically(
        paths.METRICS_DIR / f"tune-{variant}.json", json.dumps(metrics, indent=2) + "\n"
    )
    tracker.finish(study, metrics, best)

    log.info(
        "tune %s: best val_accuracy %.4f (trial %d%s), %d complete, %d pruned, %d failed; "
        "%d of %d epochs run (%d saved by pruning); %.0f s",
        variant,
        best_trial.value,
        best_trial.number,
        f", textbook {metrics['textbook_val_accuracy']:.4f}"
        if "textbook_val_accuracy" in metrics
        else "",
        metrics["trials_complete"],
        metrics["trials_pruned"],
        metrics["trials_failed"],
        metrics["epochs_run"],
        metrics["epochs_unpruned"],
        metrics["epochs_saved"],
        metrics["wall_seconds"],
    )
    if metrics["trials_finished"] < tune.n_trials and _budget_taken(study) < tune.n_trials:
        log.warning(
            "study %s has %d of tune.n_trials = %d trials (tune.timeout_s = %d or too many "
            "failures); run the stage again to finish it",
            name,
            metrics["trials_finished"],
            tune.n_trials,
            tune.timeout_s,
        )
    return TuneResult(
        study_name=name,
        storage=shown,
        best_params=best,
        metrics=metrics,
        parent_run_id=tracker.parent_run_id,
        trials_run=counter.trials,
        retried=retried,
    )


def _plain(value: Any) -> Any:
    """A JSON-friendly Python scalar (NumPy and Optuna may hand back their own types)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _interrupt(signum: int, _frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so Optuna marks the running trial FAIL at once."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """``sentiment-rnn tune --variant V``: called by the CLI after loading the parameters."""
    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, _interrupt)
    try:
        main(args.variant, params)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
