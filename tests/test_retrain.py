"""The scheduled retrain job: the lock, failures, and the real `dvc repro` + promote path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from sentiment_rnn import retrain
from sentiment_rnn.params import Params, load_params
from tiny_project import store_at, tiny_models, write_trained_project

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory):
    return tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def params(tmp_path: Path) -> Iterator[Params]:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with store_at(tmp_path):
        yield load_params(tmp_path / "params.yaml")


def _must_not_run() -> None:
    raise AssertionError("a step ran while another retrain held the lock")


def test_second_run_is_skipped_while_the_lock_is_held(params: Params, tmp_path: Path) -> None:
    lock = FileLock(str(tmp_path / ".retrain.lock"))
    with lock.acquire(blocking=False):
        result = retrain.main(params, refresh=_must_not_run, repro=_must_not_run)
        assert result.status == "skipped"
        assert "another retrain holds" in result.summary

        # The console script says so on one line and exits 0: skipping is not a failure.
        completed = subprocess.run(
            [str(Path(sys.executable).with_name("sentiment-rnn")), "retrain"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
        assert completed.returncode == 0, completed.stderr
        assert "retrain: skipped: another retrain holds" in completed.stderr


def test_failed_step_exits_nonzero_and_releases_the_lock(params: Params, tmp_path: Path) -> None:
    def failing_refresh() -> None:
        retrain.run_command([sys.executable, "-c", "raise SystemExit(3)"])

    result = retrain.main(params, refresh=failing_refresh, repro=_must_not_run)

    assert result.status == "failed"
    assert "failed at refresh" in result.summary and "exited with status 3" in result.summary
    with FileLock(str(tmp_path / ".retrain.lock")).acquire(blocking=False):
        pass  # released


def _dvc_project(root: Path) -> None:
    """A DVC project with a stand-in fetch stage and the real compare stage of dvc.yaml."""
    shutil.copytree(
        REPO / "src" / "sentiment_rnn",
        root / "src" / "sentiment_rnn",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / "source").mkdir()
    (root / "source" / "archive.txt").write_text("reviews\n")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    fetch = {
        "cmd": "python -c \"import shutil; shutil.copy('source/archive.txt', 'archive.txt')\"",
        "deps": ["source/archive.txt"],
        "outs": ["archive.txt"],
    }
    (root / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"fetch": fetch, "compare": stages["compare"]}})
    )
    subprocess.run(retrain.dvc("init", "--no-scm", "-q"), cwd=root, check=True, timeout=120)


@pytest.mark.slow
def test_retrain_keeps_the_champion_then_promotes_a_better_one(
    params: Params, tmp_path: Path, models
) -> None:
    import mlflow

    _dvc_project(tmp_path)
    write_trained_project(tmp_path, {"lstm": models.poor, "rnn": models.fair})

    # First run: dvc repro runs compare (registers v1 lstm, v2 rnn); the first model is champion.
    first = retrain.main(params)
    assert first.status == "done", first.summary
    assert first.promoted and first.champion_version == "1"

    # Nothing changed: compare does not re-run, and the champion stays.
    second = retrain.main(params)
    assert second.status == "done" and not second.promoted
    assert second.champion_version == "1" and "already the champion" in second.summary
    client = mlflow.MlflowClient()
    assert client.get_model_version(params.registry.model_name, "1").tags["promotion"] == "promoted"

    # Training produced a better LSTM: compare registers it, promote moves the champion.
    shutil.copy(models.good / "model.keras", tmp_path / "models" / "lstm" / "model.keras")
    third = retrain.main(params)
    assert third.status == "done" and third.promoted, third.summary
    assert third.champion_version == "3"
    champion = client.get_model_version_by_alias(params.registry.model_name, "champion")
    assert champion.tags["variant"] == "lstm"

    # `dvc metrics show` lists the comparison's headline numbers.
    shown = subprocess.run(
        retrain.dvc("metrics", "show", "--json"),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    metrics = json.loads(shown.stdout)[""]["data"]["metrics/compare.json"]["data"]
    assert metrics["lstm_test_accuracy_mean"] == 0.8612
    assert metrics["params_ratio"] == pytest.approx(24353 / 18113)
