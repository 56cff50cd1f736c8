"""The compare stage: report, plots, metrics, the comparison run and the registered models."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from sentiment_rnn import compare
from sentiment_rnn.errors import UserError
from tiny_project import (
    EXPERIMENT,
    REGISTRY,
    metrics_for,
    store_at,
    tiny_models,
    write_trained_project,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory):
    return tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def project(tmp_path: Path, models) -> Iterator[dict[str, str]]:
    with store_at(tmp_path):
        yield write_trained_project(tmp_path, {"lstm": models.good, "rnn": models.fair})


def test_compare_reports_links_runs_and_registers_both_models(project: dict[str, str]) -> None:
    import mlflow

    result = compare.main(["lstm", "rnn"], EXPERIMENT, REGISTRY)

    # The report answers the question with the numbers behind it.
    report = Path("reports/comparison.md").read_text(encoding="utf-8")
    assert "Did the LSTM's extra cost buy accuracy on this run?** Yes:" in report
    assert "1.34x the parameters" in report  # 24,353 / 18,113
    assert "2.14x the training time per epoch" in report  # 12.4 / 5.8
    assert "0.8612 ± 0.0041" in report and "0.8190 ± 0.0102" in report
    assert "+4.22 points" in report
    assert "| parameters | 24,353 | 18,113 | 1.34x |" in report
    assert "| learning_rate | 0.0021 (tuned) | 0.0043 (tuned) |" in report
    assert "| batch_size | 128 | 128 |" in report
    assert "The MLflow parent runs hold the same numbers." in report
    for run_id in project.values():
        assert run_id in report

    table = pd.read_csv("reports/comparison.csv").set_index("quantity")
    assert table.loc["params_total", "lstm_vs_rnn"] == pytest.approx(24353 / 18113)
    assert table.loc["test_accuracy_mean", "lstm_vs_rnn"] == pytest.approx(0.8612 - 0.8190)
    assert table.loc["test_accuracy_mean", "comparison"] == "difference"
    assert table.loc["seconds_per_epoch_mean", "comparison"] == "ratio"
    assert table.loc["optimizer", "lstm"] == "adam"

    for png in ("learning_curves.png", "accuracy_vs_time.png"):
        assert Path("reports", png).read_bytes().startswith(PNG_MAGIC)

    headline = json.loads(Path("metrics/compare.json").read_text())
    assert headline["lstm_test_accuracy_mean"] == 0.8612
    assert headline["rnn_test_roc_auc_mean"] == 0.8905
    assert headline["rnn_latency_p50_ms_mean"] == 11.0 and len(headline) == 19
    assert headline["params_ratio"] == pytest.approx(24353 / 18113)
    assert headline["lstm_bought_accuracy"] is True

    # The comparison run links the compared runs and carries the report.
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["stage"] == "compare"
    assert run.data.tags["run_id.lstm"] == project["lstm"]
    assert run.data.params["rnn_parent_run_id"] == project["rnn"]
    assert run.data.metrics["accuracy_gain"] == pytest.approx(0.8612 - 0.8190)
    artifacts = {item.path for item in client.list_artifacts(result.run_id, "reports")}
    assert "reports/comparison.md" in artifacts and "reports/learning_curves.png" in artifacts

    # Both variants are registered with their numbers; the better one is the challenger.
    assert result.versions == {"lstm": "1", "rnn": "2"}
    lstm_version = client.get_model_version(REGISTRY.model_name, "1")
    assert lstm_version.tags["variant"] == "lstm"
    assert lstm_version.tags["train_run_id"] == project["lstm"]
    assert float(lstm_version.tags["test_accuracy_mean"]) == pytest.approx(0.8612)
    challenger = client.get_model_version_by_alias(REGISTRY.model_name, "challenger")
    assert str(challenger.version) == "1"


def _result(variant: str, accuracy: float, std: float) -> compare.VariantResult:
    metrics = metrics_for(variant)
    metrics["test_accuracy_mean"], metrics["test_accuracy_std"] = accuracy, std
    return compare.VariantResult(variant, metrics, {}, pd.DataFrame(), Path("models", variant))


@pytest.mark.parametrize(
    ("lstm", "rnn", "answer", "bought"),
    [
        ((0.86, 0.004), (0.82, 0.010), "Yes: ", True),
        ((0.825, 0.010), (0.82, 0.010), "No: ", False),  # +0.5 points, within the spread
        ((0.80, 0.004), (0.82, 0.010), "No: ", False),
        ((0.86, 0.0), (0.82, 0.0), "Yes: ", True),  # one seed: no spread to judge against
    ],
)
def test_verdict_weighs_the_gain_against_the_seed_spread(lstm, rnn, answer, bought) -> None:
    headline, verdict, challenger = compare.judge([_result("lstm", *lstm), _result("rnn", *rnn)])

    assert verdict.startswith(answer)
    assert ("no seed-to-seed spread" in verdict) is (lstm[1] == rnn[1] == 0.0)
    assert headline["lstm_bought_accuracy"] is bought
    assert math.isclose(headline["accuracy_gain"], lstm[0] - rnn[0])
    # The challenger is chosen on validation accuracy, never on the test set.
    assert challenger == "lstm"


def test_missing_train_output_names_the_file_and_key(project: dict[str, str]) -> None:
    metrics_path = Path("metrics/train-rnn.json")
    metrics = json.loads(metrics_path.read_text())
    del metrics["latency_p95_ms_mean"]
    metrics_path.write_text(json.dumps(metrics))

    with pytest.raises(UserError, match=r"train-rnn\.json: missing key 'latency_p95_ms_mean'"):
        compare.main(["lstm", "rnn"], EXPERIMENT, REGISTRY)

    Path("models/lstm/run.json").unlink()
    with pytest.raises(UserError, match=r"run\.json: not found; run `dvc repro train@lstm`"):
        compare.load_variant("lstm")
