"""The classifiers: Keras' parameter counts against the textbook formulas, and compilation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sentiment_rnn.model import (
    build_model,
    compile_model,
    dense_parameters,
    embedding_parameters,
    expected_parameters,
    recurrent_parameters,
)


@pytest.mark.parametrize(("variant", "expected"), [("lstm", 24_353), ("rnn", 18_113)])
def test_textbook_sizes_count_the_textbook_parameters(variant: str, expected: int) -> None:
    model = build_model(variant, num_words=500, maxlen=200, embedding_dim=32, units=32)

    assert model.count_params() == expected
    assert expected_parameters(variant, 500, 32, 32) == expected


@pytest.mark.parametrize("variant", ["lstm", "rnn"])
@pytest.mark.parametrize(
    ("num_words", "embedding_dim", "units"),
    [(50, 8, 4), (1000, 16, 64), (20, 3, 5), (500, 64, 16)],
)
def test_formulas_match_keras_layer_by_layer(
    variant: str, num_words: int, embedding_dim: int, units: int
) -> None:
    model = build_model(variant, num_words, maxlen=30, embedding_dim=embedding_dim, units=units)

    assert model.get_layer("embedding").count_params() == embedding_parameters(
        num_words, embedding_dim
    )
    assert model.get_layer(variant).count_params() == recurrent_parameters(
        variant, units, embedding_dim
    )
    assert model.get_layer("output").count_params() == dense_parameters(units)
    assert model.count_params() == expected_parameters(variant, num_words, embedding_dim, units)


def test_lstm_has_four_gates_of_the_simple_rnn_block() -> None:
    assert recurrent_parameters("lstm", 32, 32) == 4 * recurrent_parameters("rnn", 32, 32) == 8_320


def test_model_takes_integer_sequences_and_outputs_one_probability() -> None:
    import numpy as np

    model = build_model("rnn", num_words=40, maxlen=12, embedding_dim=4, units=3)
    sequences = np.random.default_rng(0).integers(0, 40, size=(5, 12)).astype("int32")

    probabilities = np.asarray(model(sequences, training=False))

    assert probabilities.shape == (5, 1)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_dropout_reaches_the_recurrent_layer() -> None:
    model = build_model("lstm", 40, 12, 4, 3, dropout=0.25, recurrent_dropout=0.1)

    layer = model.get_layer("lstm")
    assert (layer.dropout, layer.recurrent_dropout) == (0.25, 0.1)


@pytest.mark.parametrize(("optimizer", "kind"), [("rmsprop", "RMSprop"), ("adam", "Adam")])
def test_compile_sets_optimizer_rate_xla_and_steps_per_execution(optimizer: str, kind: str) -> None:
    model = build_model("rnn", 40, 12, 4, 3)

    compile_model(model, optimizer, 0.0123, jit_compile=True, steps_per_execution=8)

    assert type(model.optimizer).__name__ == kind
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0123)
    assert model.jit_compile is True
    assert model.steps_per_execution == 8
    assert model.loss == "binary_crossentropy"


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown variant 'gru'"):
        build_model("gru", 40, 12, 4, 3)  # type: ignore[arg-type]


def test_importing_model_and_train_does_not_load_tensorflow() -> None:
    # TensorFlow takes seconds to import; only code that trains or predicts should pay for it.
    code = (
        "import sys, sentiment_rnn.model, sentiment_rnn.train; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_configure_threads_sizes_both_pools_and_only_warns_once_tensorflow_runs() -> None:
    # A fresh interpreter: TensorFlow fixes its pools at its first operation.
    code = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
import tensorflow as tf
from sentiment_rnn.model import configure_threads
configure_threads(0)
print("default", tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
configure_threads(1)
print("set", tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
tf.constant(1.0) + 1.0
configure_threads(1)
configure_threads(2)
print("after", tf.config.threading.get_intra_op_parallelism_threads())
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "default 0 0"
    assert lines[1] == "set 1 1"
    # Same size again is a no-op; another size once TensorFlow runs is a warning, not a crash.
    assert len(lines) == 4
    assert "already running with 1 intra- and 1 inter-op threads" in lines[2]
    assert "train.threads = 2" in lines[2]
    assert lines[3] == "after 1"
