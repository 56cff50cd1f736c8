"""``sentiment-rnn predict``: classify raw reviews with a registered model.

Reviews come as arguments, from a file (one review per line, ``--file -`` for standard input) or
piped on standard input. The model is the registered version behind an alias (``champion`` by
default), loaded as its MLflow pyfunc, so this is exactly what ``mlflow models serve`` would
answer. One line per review: label, probability of a positive review, and the review; ``--json``
writes one JSON object per line instead.

    sentiment-rnn predict "a wonderful, moving film"
    sentiment-rnn predict --json --file reviews.txt
    cat reviews.txt | sentiment-rnn predict --alias challenger
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sentiment_rnn.errors import UserError
from sentiment_rnn.params import Params, RegistryParams

log = logging.getLogger(__name__)

PREVIEW_CHARACTERS = 70


@dataclass(frozen=True)
class Prediction:
    """One classified review.

    Attributes:
        text: The review as given.
        probability: Probability that the review is positive.
        label: 1 positive, 0 negative.
    """

    text: str
    probability: float
    label: int

    @property
    def sentiment(self) -> str:
        """``positive`` or ``negative``."""
        return "positive" if self.label == 1 else "negative"


@dataclass(frozen=True)
class Predictions:
    """The predictions and the model version that made them."""

    model_name: str
    alias: str
    version: str
    items: list[Prediction]


def read_reviews(texts: Sequence[str], file: str | None, stdin: TextIO) -> list[str]:
    """Collect the reviews to classify; blank lines are skipped.

    Args:
        texts: Reviews given as arguments.
        file: A file with one review per line, or ``-`` for standard input.
        stdin: Standard input, read when neither texts nor a file are given.

    Returns:
        The non-empty reviews.

    Raises:
        UserError: For both arguments and a file, a missing file, or no review at all.
    """
    if texts and file:
        raise UserError("give reviews as arguments or with --file, not both")
    if texts:
        lines = list(texts)
        source = "the arguments"
    elif file and file != "-":
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UserError(f"{file}: no such file; give a file with one review per line") from None
        source = file
    else:
        if file is None and stdin.isatty():
            raise UserError(
                "no review given: pass a review as an argument, --file FILE, or pipe reviews "
                "on standard input"
            )
        lines = stdin.read().splitlines()
        source = "standard input"
    reviews = [line.strip() for line in lines if line.strip()]
    if not reviews:
        raise UserError(f"no review in {source}: every line is empty; give at least one review")
    return reviews


def main(reviews: Sequence[str], registry: RegistryParams, alias: str = "champion") -> Predictions:
    """Classify reviews with the model version behind ``alias``.

    Args:
        reviews: Raw reviews.
        registry: The registered model name.
        alias: Which version to use.

    Returns:
        One prediction per review, in order.

    Raises:
        UserError: If there is no review, no tracking store, or no such model or alias.
    """
    if not reviews:
        raise UserError("no review given; give at least one review")
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from sentiment_rnn.registry import require_alias, require_store
    from sentiment_rnn.serving import TEXT_COLUMN

    require_store()
    version = require_alias(MlflowClient(), registry.model_name, alias)
    log.info(
        "model %s@%s = version %s (%s)",
        registry.model_name,
        alias,
        version.version,
        version.tags.get("variant", "unknown variant"),
    )
    # Load by number: the alias could move between the look-up above and a second resolution.
    model = mlflow.pyfunc.load_model(f"models:/{registry.model_name}/{version.version}")
    output = model.predict(pd.DataFrame({TEXT_COLUMN: list(reviews)}))
    items = [
        Prediction(text, float(probability), int(label))
        for text, probability, label in zip(
            reviews, output["probability"], output["label"], strict=True
        )
    ]
    return Predictions(registry.model_name, alias, str(version.version), items)


def format_line(prediction: Prediction) -> str:
    """A line for a person: label, probability, and the start of the review."""
    text = prediction.text
    if len(text) > PREVIEW_CHARACTERS:
        text = text[: PREVIEW_CHARACTERS - 1] + "…"
    return f"{prediction.sentiment:<8}  {prediction.probability:.4f}  {text}"


def format_json(prediction: Prediction, predictions: Predictions) -> str:
    """A JSON line for a machine, naming the model version that answered."""
    return json.dumps(
        {
            "text": prediction.text,
            "label": prediction.label,
            "sentiment": prediction.sentiment,
            "probability": prediction.probability,
            "model": predictions.model_name,
            "version": predictions.version,
        },
        ensure_ascii=False,
    )


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """``sentiment-rnn predict``: the results go to standard output, logs to standard error."""
    reviews = read_reviews(args.texts, args.file, sys.stdin)
    # MLflow draws a progress bar for every artifact download; on a terminal it would bury the
    # predictions. Only the default changes: the environment can still turn it back on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    predictions = main(reviews, params.registry, alias=args.alias)
    for prediction in predictions.items:
        line = format_json(prediction, predictions) if args.json else format_line(prediction)
        sys.stdout.write(line + "\n")
    return 0
