"""Promotion: the champion moves only to a challenger that is better on the current test data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sentiment_rnn import promote, tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.promote import Evaluation
from tiny_project import EXPERIMENT, REGISTRY, register, reviews_table, store_at, tiny_models


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory):
    return tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    reviews_table().to_parquet(processed / "reviews.parquet", index=False)
    with store_at(tmp_path):
        yield tmp_path


def test_champion_moves_only_to_a_better_challenger(store: Path, models) -> None:
    import mlflow

    client = mlflow.MlflowClient()

    def champion() -> str:
        return str(client.get_model_version_by_alias(REGISTRY.model_name, "champion").version)

    # The first model ever becomes champion, however weak.
    poor = register(models.poor, alias="challenger")
    first = promote.main(REGISTRY, EXPERIMENT)
    assert first.promoted and first.champion is None and champion() == poor
    assert "first champion" in first.reason

    # A clearly better challenger takes over; both were scored now, on the same reviews.
    good = register(models.good, alias="challenger")
    second = promote.main(REGISTRY, EXPERIMENT)
    assert second.promoted and champion() == good
    assert second.challenger.accuracy >= second.champion.accuracy + REGISTRY.min_delta
    assert second.challenger.reviews == second.champion.reviews == 120
    assert second.challenger.accuracy > 0.9

    # A worse challenger leaves the champion where it is.
    worse = register(models.fair, alias="challenger")
    third = promote.main(REGISTRY, EXPERIMENT)
    assert not third.promoted and champion() == good
    assert third.reason.startswith("kept the champion")

    # The decision is recorded: a promote run with both scores, and tags on the versions.
    run = client.get_run(third.run_id)
    assert run.data.tags["stage"] == "promote" and run.data.tags["decision"] == "kept"
    assert run.data.tags["reason"] == third.reason
    assert run.data.metrics["champion_test_accuracy"] == pytest.approx(third.champion.accuracy)
    assert run.data.metrics["challenger_test_accuracy"] == pytest.approx(third.challenger.accuracy)
    tags = client.get_model_version(REGISTRY.model_name, worse).tags
    assert tags["promotion"] == "kept" and tags["last_evaluated_run_id"] == third.run_id
    assert client.get_model_version(REGISTRY.model_name, good).tags["promotion"] == "promoted"
    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT.experiment], filter_string="tags.stage = 'promote'"
    )
    assert sorted(runs["tags.decision"]) == ["kept", "promoted", "promoted"]


def _score(version: str, accuracy: float) -> Evaluation:
    return Evaluation(version, accuracy, 0.9, 100, 0.1)


def test_decide_applies_the_margin() -> None:
    champion = _score("1", 0.850)
    assert promote.decide(_score("2", 0.852), champion, 0.002)[0] is True
    assert promote.decide(_score("2", 0.8515), champion, 0.002)[0] is False
    assert promote.decide(_score("2", 0.900), None, 0.002)[0] is True
    promoted, reason = promote.decide(_score("1", 0.850), champion, 0.0)
    assert not promoted and reason == "version 1 is already the champion"


def test_promote_needs_a_store_a_challenger_and_test_reviews(store: Path, models) -> None:
    with pytest.raises(UserError, match="no MLflow store at .*mlflow.db: run `dvc repro`"):
        promote.main(REGISTRY, EXPERIMENT)

    tracking.configure(EXPERIMENT.experiment)
    with pytest.raises(UserError, match="has no alias 'challenger'.*run `dvc repro`"):
        promote.main(REGISTRY, EXPERIMENT)

    register(models.poor, alias="challenger")
    (store / "data" / "processed" / "reviews.parquet").unlink()
    with pytest.raises(UserError, match=r"reviews\.parquet: not found; run `dvc repro preprocess`"):
        promote.main(REGISTRY, EXPERIMENT)
