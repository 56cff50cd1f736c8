"""The tune stage: a real Optuna journal, a real SQLite MLflow store and real Keras trials on tiny
data; killed and concurrent workers are real `sentiment-rnn tune` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sentiment_rnn import cli, tune
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import TUNABLE_KEYS, Params, SearchSpace, parse_params
from sentiment_rnn.text import Vocabulary

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "tune-tests"
NUM_WORDS = 30
MAXLEN = 16
POSITIVE_TOKEN, NEGATIVE_TOKEN = 5, 6


def write_processed(root: Path, train: int = 160, validation: int = 80) -> None:
    """Encoded splits in the contract's format: the label shows as a repeated cue token."""
    rng = np.random.default_rng(0)
    folder = root / "data" / "processed"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("validation", validation)):
        labels = np.arange(count) % 2
        x = rng.integers(3, NUM_WORDS, size=(count, MAXLEN)).astype(np.int32)
        cue_columns = rng.random((count, MAXLEN)) < 0.3
        cues = np.where(labels[:, None] == 1, POSITIVE_TOKEN, NEGATIVE_TOKEN)
        x = np.where(cue_columns, cues, x).astype(np.int32)
        ids = np.array([f"{split}/{'pos' if y else 'neg'}/{i}_5" for i, y in enumerate(labels)])
        np.savez(folder / f"{split}.npz", x=x, y=labels.astype(np.int8), ids=ids)
    words = {f"w{index}": index for index in range(3, NUM_WORDS)}
    vocabulary = Vocabulary(num_words=NUM_WORDS, word_index=words)
    (folder / "vocabulary.json").write_text(vocabulary.to_json(), encoding="utf-8")


def tiny_raw_params(**tune_changes: Any) -> dict[str, Any]:
    """params.yaml shrunk to a tiny model and study; the textbook trial lies inside the space."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["train"].update(
        embedding_dim=4, units=4, batch_size=32, learning_rate=0.01, jit_compile=False
    )
    raw["tune"].update(
        n_trials=3,
        epochs=2,
        timeout_s=300,
        train_fraction=0.5,
        pruner_startup_trials=2,
        pruner_warmup_epochs=1,
        storage=None,
    )
    raw["tune"]["space"].update(
        learning_rate={"low": 0.003, "high": 0.03},
        batch_size=[16, 32],
        units=[4],
        embedding_dim=[4],
    )
    raw["tune"].update(tune_changes)
    raw["mlflow"]["experiment"] = EXPERIMENT
    return raw


def write_params(root: Path, raw: dict[str, Any]) -> Params:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return parse_params(raw, str(path))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with tiny processed data; the stores live in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tune.STORAGE_ENV, raising=False)
    monkeypatch.delenv("SENTIMENT_RNN_STORE_ROOT", raising=False)
    write_processed(tmp_path)
    return tmp_path


def load_study(root: Path, name: str):
    import optuna

    storage = tune.open_storage(str(root / "optuna" / "journal.log"))
    return optuna.load_study(study_name=name, storage=storage)


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def tune_runs(root: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], "tags.stage = 'tune'")


def cli_command(root: Path, variant: str = "rnn") -> list[str]:
    script = Path(sys.executable).with_name("sentiment-rnn")
    return [str(script), "--params", str(root / "params.yaml"), "tune", "--variant", variant]


def cli_env(root: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != tune.STORAGE_ENV}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    return env


# Fast checks of the pieces, no training


def test_stratified_subset_keeps_the_label_shares_and_is_seeded() -> None:
    labels = np.array([0] * 300 + [1] * 100)
    kept = tune.stratified_subset(labels, 0.25, seed=7)
    assert len(kept) == len(set(kept)) == 100
    assert (labels[kept] == 1).sum() == 25
    # Shuffled, so cutting the tail to whole batches drops reviews of both labels.
    assert (labels[kept[:50]] == 1).sum() > 0 and (labels[kept[50:]] == 1).sum() > 0
    assert np.array_equal(kept, tune.stratified_subset(labels, 0.25, seed=7))
    assert not np.array_equal(kept, tune.stratified_subset(labels, 0.25, seed=8))
    assert sorted(tune.stratified_subset(labels, 1.0, seed=7)) == list(range(400))
    assert tune.whole_batches(100, 32) == 96 and tune.whole_batches(20, 32) == 20


def test_study_name_follows_the_objective_not_the_budget() -> None:
    params = parse_params(tiny_raw_params())
    textbook = tune.textbook_params(params.train, params.tune.space)
    name = tune.study_name("rnn", params.tune, textbook, "a" * 64)
    more_trials = params.tune.model_copy(update={"n_trials": 50, "timeout_s": 9})
    assert tune.study_name("rnn", more_trials, textbook, "a" * 64) == name
    assert tune.study_name("lstm", params.tune, textbook, "a" * 64) != name
    assert tune.study_name("rnn", params.tune, textbook, "b" * 64) != name
    longer = params.tune.model_copy(update={"epochs": 5})
    assert tune.study_name("rnn", longer, textbook, "a" * 64) != name
    wider = params.tune.model_copy(
        update={"space": params.tune.space.model_copy(update={"units": [4, 8]})}
    )
    assert tune.study_name("rnn", wider, textbook, "a" * 64) != name


def test_textbook_outside_the_choices_is_a_user_error() -> None:
    params = parse_params(tiny_raw_params())
    space = SearchSpace.model_validate({**params.tune.space.model_dump(), "batch_size": [64]})
    with pytest.raises(UserError, match=r"tune.space.batch_size = \[64\] lacks train.batch_size"):
        tune.textbook_params(params.train, space)


def test_storage_location_and_redaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_RNN_STORE_ROOT", str(tmp_path))
    monkeypatch.delenv(tune.STORAGE_ENV, raising=False)
    params = parse_params(tiny_raw_params())
    assert tune.storage_location(params.tune) == str(tmp_path / "optuna" / "journal.log")
    url = "postgresql://tuner:s3cret@db.invalid:5432/optuna"
    monkeypatch.setenv(tune.STORAGE_ENV, url)
    assert tune.storage_location(params.tune) == url
    assert tune.redact(url) == "postgresql://tuner:***@db.invalid:5432/optuna"
    with pytest.raises(UserError) as caught:
        tune.open_storage("postgresql://tuner:s3cret@127.0.0.1:1/optuna")
    assert "s3cret" not in str(caught.value) and "tune.storage" in str(caught.value)
    assert type(tune.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")).__name__ == "RDBStorage"


def test_trial_of_a_dead_worker_is_failed_and_queued_again(tmp_path: Path) -> None:
    import optuna

    storage = tune.open_storage(str(tmp_path / "journal.log"))
    study = optuna.create_study(study_name="stale", storage=storage, direction="maximize")
    space = parse_params(tiny_raw_params()).tune.space
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    abandoned = study.ask()
    values = tune.suggest(abandoned, space)
    abandoned.set_user_attr(tune.ATTR_HOST, __import__("socket").gethostname())
    abandoned.set_user_attr(tune.ATTR_PID, int(dead.stdout))
    alive = study.ask()
    alive.set_user_attr(tune.ATTR_HOST, __import__("socket").gethostname())
    alive.set_user_attr(tune.ATTR_PID, os.getppid())

    assert tune.fail_stale_trials(study, storage) == [abandoned.number]
    # A second worker doing the same finds nothing left to do: no double retry.
    assert tune.fail_stale_trials(study, storage) == []

    trials = study.get_trials(deepcopy=False)
    assert trials[abandoned.number].state.name == "FAIL"
    assert "is gone" in trials[abandoned.number].user_attrs[tune.ATTR_FAIL_REASON]
    assert trials[alive.number].state.name == "RUNNING"
    retry = study.ask()
    assert retry.user_attrs[tune.ATTR_RETRY_OF] == abandoned.number
    assert tune.suggest(retry, space) == values


# Real studies


@pytest.mark.slow
def test_study_runs_end_to_end_and_a_rerun_adds_nothing(project: Path) -> None:
    params = write_params(project, tiny_raw_params())

    result = tune.main("rnn", params)

    best = json.loads((project / "tuning" / "rnn" / "best_params.json").read_text())
    assert list(best) == list(TUNABLE_KEYS)
    assert isinstance(best["batch_size"], int) and isinstance(best["learning_rate"], float)
    assert best["units"] == 4 and best["embedding_dim"] == 4
    metrics = json.loads((project / "metrics" / "tune-rnn.json").read_text())
    assert metrics["trials_finished"] == 3
    assert metrics["trials_complete"] + metrics["trials_pruned"] == 3
    assert metrics["epochs_run"] + metrics["epochs_saved"] == 3 * 2
    assert metrics["best_val_accuracy"] >= metrics["textbook_val_accuracy"] > 0.5

    study = load_study(project, result.study_name)
    assert len(finished(study)) == 3
    first = study.trials[0]
    assert first.user_attrs[tune.ATTR_TEXTBOOK] is True
    assert first.params == tune.textbook_params(params.train, params.tune.space)
    assert study.best_value == pytest.approx(metrics["best_val_accuracy"])

    runs = tune_runs(project)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_id == result.parent_run_id
    assert parent.data.tags["study_name"] == result.study_name
    assert parent.data.tags["variant"] == "rnn"
    assert parent.data.tags["storage"].endswith("journal.log")
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.optimizer"] == best["optimizer"]
    from mlflow import MlflowClient

    client = MlflowClient()
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.png", "intermediate_values.png", "best_params.json"} <= artifacts
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["trial_state"] in {"complete", "pruned"}
        assert child.data.metrics["params_total"] == 4 * 30 + 4 * (4 + 4) + 4 + 5
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [point.step for point in history] == list(range(1, len(history) + 1))

    again = tune.main("rnn", params)

    assert again.trials_run == 0
    assert again.study_name == result.study_name
    assert again.best_params == best
    assert len(load_study(project, result.study_name).trials) == len(study.trials)
    assert len(tune_runs(project)) == 4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Fixed parameter learning_rate:UserWarning")
def test_diverging_trials_fail_and_the_study_goes_on(project: Path) -> None:
    # Only the textbook trial (learning rate 0.01, outside this range) can learn; every sampled
    # learning rate overflows the weights: the loss becomes infinite, or an optimizer step
    # raises on the overflowed values. Either way the trial must FAIL and the study go on.
    raw = tiny_raw_params(n_trials=2)
    raw["tune"]["space"]["learning_rate"] = {"low": 1e37, "high": 3e38}
    params = write_params(project, raw)

    result = tune.main("rnn", params)

    study = load_study(project, result.study_name)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL", "FAIL"]
    for trial in study.trials[1:]:
        reason = trial.user_attrs[tune.ATTR_FAIL_REASON]
        assert reason.startswith("diverged") or "Error" in reason.split(":")[0], reason
    assert result.metrics["trials_failed"] == 2
    assert result.best_params["learning_rate"] == 0.01
    failed_runs = [
        run for run in tune_runs(project) if run.data.tags.get("trial_state") == "failed"
    ]
    assert len(failed_runs) == 2
    assert {run.info.status for run in failed_runs} == {"FAILED"}


@pytest.mark.slow
def test_every_trial_failing_is_one_line_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The vocabulary says 10 words but the sequences use 30: every embedding lookup raises.
    words = {f"w{index}": index for index in range(3, 10)}
    vocabulary = Vocabulary(num_words=10, word_index=words).to_json()
    (project / "data" / "processed" / "vocabulary.json").write_text(vocabulary, encoding="utf-8")
    write_params(project, tiny_raw_params(n_trials=2))

    status = cli.main(["--params", str(project / "params.yaml"), "tune", "--variant", "rnn"])

    assert status == cli.EXIT_USER_ERROR
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("sentiment-rnn tune: error: tune rnn: no trial of study tune-rnn-")
    assert "2 failed" in error and "Traceback" not in error
    assert not (project / "tuning" / "rnn" / "best_params.json").exists()


@pytest.mark.slow
def test_killed_worker_is_resumed_without_repeating_finished_trials(project: Path) -> None:
    import optuna

    # Long enough trials to kill one mid-way; no pruning, so every trial runs its epochs.
    raw = tiny_raw_params(n_trials=3, epochs=8, pruner_startup_trials=10)
    params = write_params(project, raw)
    data = tune.load_data(params.tune.train_fraction, params.tune.seed)
    name = tune.study_name(
        "rnn", params.tune, tune.textbook_params(params.train, params.tune.space), data.checksum
    )
    worker = subprocess.Popen(
        cli_command(project),
        env=cli_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = project / "optuna" / "journal.log"
    deadline = time.monotonic() + 120
    killed_number = None
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            if journal.exists():
                try:
                    study = optuna.load_study(
                        study_name=name, storage=tune.open_storage(str(journal))
                    )
                except KeyError:
                    study = None
                running = [t for t in study.trials if t.state.name == "RUNNING"] if study else []
                if running and len(finished(study)) >= 1 and running[0].intermediate_values:
                    os.kill(worker.pid, signal.SIGKILL)
                    killed_number = running[0].number
                    break
            time.sleep(0.1)
    finally:
        if worker.poll() is None and killed_number is None:
            worker.kill()
        _, stderr = worker.communicate(timeout=60)
    assert killed_number is not None, f"no trial to kill; worker stderr:\n{stderr[-3000:]}"
    before = {t.number: t.value for t in finished(load_study(project, name))}

    result = tune.main("rnn", params)

    study = load_study(project, name)
    killed = study.trials[killed_number]
    assert killed.state.name == "FAIL"
    assert "is gone" in killed.user_attrs[tune.ATTR_FAIL_REASON]
    assert result.retried == [killed_number]
    retries = [t for t in study.trials if t.user_attrs.get(tune.ATTR_RETRY_OF) == killed_number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert len(finished(study)) == 3 == result.metrics["trials_finished"]
    # Trials finished before the kill are kept as they were, not run again.
    assert {t.number: t.value for t in finished(study) if t.number in before} == before
    assert result.trials_run == 3 - len(before)
    killed_run = [
        run for run in tune_runs(project) if run.data.tags.get("trial_number") == str(killed_number)
    ]
    assert [run.info.status for run in killed_run] == ["FAILED"]


@pytest.mark.slow
def test_two_workers_at_once_share_the_study_and_stop_at_n_trials(project: Path) -> None:
    write_params(project, tiny_raw_params(n_trials=4))
    workers = [
        subprocess.Popen(
            cli_command(project),
            env=cli_env(project),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=240)[1] for worker in workers]
    for worker, stderr in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]

    names = {
        line.split("study ")[1].split()[0]
        for out in outputs
        for line in out.splitlines()
        if " study tune-rnn-" in line and "tune rnn:" in line
    }
    assert len(names) == 1
    study = load_study(project, names.pop())
    assert len(finished(study)) == 4
    # Any FAIL is a trial given up before training because the other worker took the last slot.
    for trial in study.trials:
        if trial.state.name == "FAIL":
            assert trial.user_attrs[tune.ATTR_FAIL_REASON].startswith("over budget")
    assert sum(bool(t.user_attrs.get(tune.ATTR_TEXTBOOK)) for t in study.trials) == 1
    runs = tune_runs(project)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 4
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
