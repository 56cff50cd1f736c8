"""``sentiment-rnn promote``: move the ``champion`` alias to the challenger only if it is better.

Both models are scored now, on the same data: the test rows of ``data/processed/reviews.parquet``,
as raw text through the registered pyfunc models, so a champion is never defended by a number it
earned on older data or with older code. The challenger (alias ``challenger``, set by the compare
stage) becomes champion when its test accuracy beats the champion's by at least
``registry.min_delta``; the first model ever registered becomes champion unopposed.

The decision is recorded twice: an MLflow run ``promote`` (tag ``stage=promote``) with both
scores, the decision and the reason, and tags on the challenger's and champion's model versions.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sentiment_rnn import paths, tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import MlflowParams, Params, RegistryParams
from sentiment_rnn.registry import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)

REVIEWS_FILE = paths.PROCESSED_DIR / "reviews.parquet"


@dataclass(frozen=True)
class Evaluation:
    """One model version scored on the current test reviews.

    Attributes:
        version: The registered model version.
        accuracy: Share of test reviews labelled correctly.
        roc_auc: Area under the ROC curve of the probabilities (NaN with a single class).
        reviews: How many test reviews were scored.
        seconds: Time to load and score.
    """

    version: str
    accuracy: float
    roc_auc: float
    reviews: int
    seconds: float


@dataclass(frozen=True)
class Decision:
    """What promote decided.

    Attributes:
        promoted: Whether ``champion`` moved to the challenger.
        reason: One sentence a person can read in the logs and in MLflow.
        challenger: The challenger's score.
        champion: The previous champion's score, or None when there was no champion.
        champion_version: The champion's version after the decision.
        run_id: The MLflow ``promote`` run.
    """

    promoted: bool
    reason: str
    challenger: Evaluation
    champion: Evaluation | None
    champion_version: str
    run_id: str


def load_test_reviews(path: Path = REVIEWS_FILE) -> tuple[list[str], np.ndarray]:
    """The current test reviews as raw text and labels.

    Args:
        path: The preprocess stage's review table.

    Returns:
        ``(texts, labels)``.

    Raises:
        UserError: If the table is missing or has no test rows.
    """
    try:
        reviews = pd.read_parquet(path, columns=["split", "text", "label"])
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro preprocess` first") from None
    test = reviews[reviews["split"] == "test"]
    if test.empty:
        raise UserError(f"{path}: no rows with split 'test'; re-run `dvc repro preprocess`")
    return test["text"].astype(str).tolist(), test["label"].to_numpy(dtype=np.int64)


def evaluate(model_name: str, version: str, texts: list[str], labels: np.ndarray) -> Evaluation:
    """Score a registered version on raw reviews through its pyfunc, as it would be served.

    Args:
        model_name: The registered model.
        version: Its version.
        texts: Raw reviews.
        labels: Their labels (1 positive).

    Returns:
        The version's accuracy and ROC AUC.
    """
    import mlflow
    from sklearn.metrics import roc_auc_score

    from sentiment_rnn.serving import TEXT_COLUMN

    log.info("scoring %s version %s on %d test reviews", model_name, version, len(texts))
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    predictions = model.predict(pd.DataFrame({TEXT_COLUMN: texts}))
    accuracy = float(np.mean(predictions["label"].to_numpy() == labels))
    roc_auc = (
        float(roc_auc_score(labels, predictions["probability"].to_numpy()))
        if len(np.unique(labels)) == 2
        else math.nan
    )
    seconds = time.perf_counter() - started
    log.info(
        "version %s: test accuracy %.4f, ROC AUC %.4f (%.1f s)", version, accuracy, roc_auc, seconds
    )
    return Evaluation(version, accuracy, roc_auc, len(texts), seconds)


def decide(
    challenger: Evaluation, champion: Evaluation | None, min_delta: float
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why.

    Args:
        challenger: The challenger's score.
        champion: The champion's score, or None when there is no champion yet.
        min_delta: The accuracy margin the challenger must reach.

    Returns:
        ``(promote, reason)``.
    """
    if champion is None:
        return True, f"no champion yet: version {challenger.version} becomes the first champion"
    if champion.version == challenger.version:
        return False, f"version {challenger.version} is already the champion"
    delta = challenger.accuracy - champion.accuracy
    comparison = (
        f"challenger version {challenger.version} test accuracy {challenger.accuracy:.4f} vs "
        f"champion version {champion.version} {champion.accuracy:.4f} ({delta:+.4f}; "
        f"needs {min_delta:+.4f})"
    )
    if delta >= min_delta:
        return True, f"promoted: {comparison}"
    return False, f"kept the champion: {comparison}"


def main(registry: RegistryParams, mlflow_params: MlflowParams) -> Decision:
    """Score challenger and champion on the current test data and move ``champion`` if earned.

    Args:
        registry: Model name and the promotion margin ``min_delta``.
        mlflow_params: The experiment that records the decision.

    Returns:
        The decision.

    Raises:
        UserError: If the store, the challenger or the test reviews are missing.
    """
    import mlflow
    from mlflow import MlflowClient

    from sentiment_rnn.registry import alias_version, require_alias, require_store

    require_store()
    client = MlflowClient()
    challenger_version = require_alias(client, registry.model_name, CHALLENGER).version
    champion_entry = alias_version(client, registry.model_name, CHAMPION)
    champion_version = champion_entry.version if champion_entry is not None else None
    texts, labels = load_test_reviews()

    challenger = evaluate(registry.model_name, str(challenger_version), texts, labels)
    champion: Evaluation | None = None
    if champion_version is not None:
        champion = (
            challenger
            if str(champion_version) == challenger.version
            else evaluate(registry.model_name, str(champion_version), texts, labels)
        )
    promoted, reason = decide(challenger, champion, registry.min_delta)

    tracking.configure(mlflow_params.experiment)
    tags = {
        "stage": "promote",
        "decision": "promoted" if promoted else "kept",
        "reason": reason,
        "challenger_version": challenger.version,
        "champion_version_before": champion.version if champion else "none",
        "git_commit": tracking.git_commit(),
    }
    with mlflow.start_run(run_name="promote", tags=tags) as run:
        mlflow.log_params(
            {
                "model_name": registry.model_name,
                "min_delta": registry.min_delta,
                "test_reviews": len(texts),
                "challenger_version": challenger.version,
                "champion_version_before": champion.version if champion else "none",
            }
        )
        scores = {
            "challenger_test_accuracy": challenger.accuracy,
            "challenger_test_roc_auc": challenger.roc_auc,
        }
        if champion is not None:
            scores |= {
                "champion_test_accuracy": champion.accuracy,
                "champion_test_roc_auc": champion.roc_auc,
                "accuracy_delta": challenger.accuracy - champion.accuracy,
            }
        mlflow.log_metrics({key: value for key, value in scores.items() if not math.isnan(value)})
        run_id = run.info.run_id

    rechecked_champion = champion is challenger
    evaluated = [challenger] if champion is None or rechecked_champion else [challenger, champion]
    for evaluation in evaluated:
        client.set_model_version_tag(
            registry.model_name,
            evaluation.version,
            "last_test_accuracy",
            f"{evaluation.accuracy:.6f}",
        )
        client.set_model_version_tag(
            registry.model_name, evaluation.version, "last_evaluated_run_id", run_id
        )
    # Re-scoring the sitting champion is not a promotion decision; keep the tag of the one it won.
    if not rechecked_champion:
        for key, value in (("promotion", tags["decision"]), ("promotion_reason", reason)):
            client.set_model_version_tag(registry.model_name, challenger.version, key, value)
    if promoted:
        client.set_registered_model_alias(registry.model_name, CHAMPION, challenger.version)
    champion_now = challenger.version if promoted else str(champion_version)
    log.info("promote: %s; champion is version %s", reason, champion_now)
    return Decision(promoted, reason, challenger, champion, champion_now, run_id)


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """``sentiment-rnn promote``."""
    main(params.registry, params.mlflow)
    return 0
