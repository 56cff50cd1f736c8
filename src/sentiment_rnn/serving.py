"""The raw-text model: an MLflow pyfunc that wraps a trained Keras classifier and its vocabulary.

The pyfunc takes a table with a ``text`` column (one raw review per row) and returns a table with
``probability`` (of a positive review) and ``label`` (1 positive, 0 negative). It encodes the text
with :func:`sentiment_rnn.text.encode_texts` and the training vocabulary, exactly as preprocessing
did, so the served model and the trained model see the same sequences.

The model is logged as "models from code": MLflow copies :mod:`sentiment_rnn.served_model` (which
only names the class below) instead of pickling an object, and the package itself travels with the
model through ``code_paths``, so a registered version keeps the tokeniser it was trained with even
after the code here changes. Serve it with ``--env-manager local`` from an environment where the
package's dependencies are installed; ``pip_requirements`` pins them for the other managers.

Keras is imported only when a model is loaded, not when this module is imported.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import sentiment_rnn
from sentiment_rnn.text import Vocabulary, encode_texts

log = logging.getLogger(__name__)

TEXT_COLUMN = "text"
KERAS_ARTIFACT = "keras_model"
VOCABULARY_ARTIFACT = "vocabulary"
MODEL_FILE = "model.keras"
VOCABULARY_FILE = "vocabulary.json"
# Keras' binary accuracy counts a prediction as positive when it is strictly above 0.5; the served
# label uses the same rule so served accuracy equals the accuracy training reported.
THRESHOLD = 0.5
# Reviews per forward pass: large enough to amortise the call, small enough for a serving box.
BATCH_SIZE = 1024
# Runtime libraries of the served model, pinned to the versions that logged it.
RUNTIME_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "mlflow")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", TEXT_COLUMN)]),
    outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "label")]),
)
INPUT_EXAMPLE = pd.DataFrame(
    {TEXT_COLUMN: ["A wonderful, moving film.", "Dull, boring and far too long."]}
)


def texts_of(model_input: Any) -> list[str]:
    """The reviews in a pyfunc input, as strings.

    Args:
        model_input: A DataFrame with a ``text`` column (what MLflow passes after checking the
            signature), or for direct calls a Series, a list or array of strings, or one string.

    Returns:
        One string per review; missing values become empty reviews.

    Raises:
        ValueError: For a DataFrame without a ``text`` column.
    """
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise ValueError(
                f"expected a column {TEXT_COLUMN!r}; got columns {list(model_input.columns)}"
            )
        column = model_input[TEXT_COLUMN]
    elif isinstance(model_input, str):
        column = pd.Series([model_input])
    else:
        column = pd.Series(list(np.asarray(model_input, dtype=object).ravel()))
    return ["" if pd.isna(value) else str(value) for value in column]


class TextSentimentModel(mlflow.pyfunc.PythonModel):
    """Raw review text in, probability and label out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the Keras model and the vocabulary from the model's artifacts."""
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self.vocabulary = Vocabulary.load(context.artifacts[VOCABULARY_ARTIFACT])
        # The sequence length is part of the trained model, so it cannot drift from training.
        self.maxlen = int(self.model.input_shape[1])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Classify reviews.

        Args:
            context: The MLflow context (unused after loading).
            model_input: A table with a ``text`` column.
            params: Not used; the model has no inference parameters.

        Returns:
            A table with ``probability`` (float) and ``label`` (0 or 1), one row per review.
        """
        sequences = encode_texts(texts_of(model_input), self.vocabulary, self.maxlen)
        probabilities = predict_probabilities(self.model, sequences)
        return pd.DataFrame(
            {
                "probability": probabilities.astype(np.float64),
                "label": (probabilities > THRESHOLD).astype(np.int64),
            }
        )


def predict_probabilities(model: Any, sequences: np.ndarray) -> np.ndarray:
    """The positive-class probability of each encoded review, in batches.

    Args:
        model: A Keras classifier with one sigmoid output.
        sequences: Encoded, padded reviews, shape ``(n, maxlen)``.

    Returns:
        A float32 vector of length ``n``.
    """
    if len(sequences) == 0:
        return np.zeros(0, dtype=np.float32)
    # predict_on_batch reuses one compiled function: cheaper than predict() for small requests.
    batches = [
        np.asarray(model.predict_on_batch(sequences[start : start + BATCH_SIZE])).reshape(-1)
        for start in range(0, len(sequences), BATCH_SIZE)
    ]
    return np.concatenate(batches).astype(np.float32)


def pip_requirements() -> list[str]:
    """The runtime libraries pinned to the installed versions."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_PACKAGES]


@contextmanager
def _package_copy() -> Iterator[Path]:
    """A clean copy of the installed package (no bytecode caches) to ship with the model."""
    source = Path(sentiment_rnn.__file__).parent
    with tempfile.TemporaryDirectory(prefix="sentiment-rnn-code-") as folder:
        target = Path(folder) / source.name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield target


def log_text_model(
    name: str, model_dir: Path, tags: Mapping[str, str] | None = None
) -> mlflow.models.model.ModelInfo:
    """Log the raw-text pyfunc of one trained variant into the active MLflow run.

    Args:
        name: The logged model's name in the run, e.g. ``text-lstm``.
        model_dir: A folder with ``model.keras`` and ``vocabulary.json`` (``models/<variant>``).
        tags: Tags for the logged model.

    Returns:
        MLflow's model info; ``model_uri`` is what :func:`register` takes.

    Raises:
        FileNotFoundError: If the Keras model or the vocabulary is missing.
    """
    artifacts = {
        KERAS_ARTIFACT: model_dir / MODEL_FILE,
        VOCABULARY_ARTIFACT: model_dir / VOCABULARY_FILE,
    }
    for path in artifacts.values():
        if not path.is_file():
            raise FileNotFoundError(path)
    entry_point = Path(__file__).with_name("served_model.py")
    with _package_copy() as package:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=entry_point,
            artifacts={key: str(path) for key, path in artifacts.items()},
            code_paths=[str(package)],
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=pip_requirements(),
            tags=dict(tags or {}),
        )
    log.info("logged raw-text model %s from %s as %s", name, model_dir, info.model_uri)
    return info
