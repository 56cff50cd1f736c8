"""The two recurrent classifiers and the textbook's parameter-count formulas.

Embedding(num_words, embedding_dim) -> LSTM(units) or SimpleRNN(units) -> Dense(1, sigmoid).
Keras is imported inside the functions that need it, so that importing this module (for the
formulas, say) does not load TensorFlow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sentiment_rnn.params import Optimizer, Variant

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

VARIANTS: tuple[Variant, ...] = ("lstm", "rnn")
# Batches per call of the compiled train step, in training and tuning alike. One call per batch
# pays a Python round trip that is a large share of a 128-review step on CPU; 8, 16 and 32
# measured alike here, all faster than 1.
STEPS_PER_EXECUTION = 16


def embedding_parameters(num_words: int, embedding_dim: int) -> int:
    """Embedding weights: one vector of ``embedding_dim`` per index."""
    return num_words * embedding_dim


def recurrent_parameters(variant: Variant, units: int, input_dim: int) -> int:
    """Weights of the recurrent layer, by the textbook formula.

    A SimpleRNN has ``u(u + d) + u``: recurrent and input kernels plus a bias. An LSTM has four
    such blocks (input, forget, cell and output gates): ``4 x [u(u + d) + u]``.

    Args:
        variant: ``lstm`` or ``rnn``.
        units: ``u``, the layer's units.
        input_dim: ``d``, the size of each input vector (the embedding size).

    Returns:
        The parameter count.
    """
    block = units * (units + input_dim) + units
    return 4 * block if variant == "lstm" else block


def dense_parameters(units: int) -> int:
    """One sigmoid output over ``units`` features: weights plus a bias."""
    return units + 1


def expected_parameters(variant: Variant, num_words: int, embedding_dim: int, units: int) -> int:
    """Total parameters of the whole model by the formulas (24,353 / 18,113 at the defaults)."""
    return (
        embedding_parameters(num_words, embedding_dim)
        + recurrent_parameters(variant, units, embedding_dim)
        + dense_parameters(units)
    )


def build_model(
    variant: Variant,
    num_words: int,
    maxlen: int,
    embedding_dim: int,
    units: int,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
) -> keras.Model:
    """Build the (uncompiled) classifier.

    Args:
        variant: ``lstm`` or ``rnn``.
        num_words: Vocabulary size, the Embedding's ``input_dim``.
        maxlen: Sequence length of the input.
        embedding_dim: Embedding vector size.
        units: Recurrent units.
        dropout: Dropout on the recurrent layer's inputs.
        recurrent_dropout: Dropout on its recurrent state.

    Returns:
        The Keras model, built, so ``count_params`` works at once.

    Raises:
        ValueError: For an unknown variant.
    """
    import keras

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    recurrent_layer = keras.layers.LSTM if variant == "lstm" else keras.layers.SimpleRNN
    model = keras.Sequential(
        [
            keras.Input(shape=(maxlen,), dtype="int32", name="sequence"),
            keras.layers.Embedding(num_words, embedding_dim, name="embedding"),
            recurrent_layer(
                units, dropout=dropout, recurrent_dropout=recurrent_dropout, name=variant
            ),
            keras.layers.Dense(1, activation="sigmoid", name="output"),
        ],
        name=f"{variant}_classifier",
    )
    return model


def make_optimizer(name: Optimizer, learning_rate: float) -> keras.optimizers.Optimizer:
    """A fresh Keras optimizer: ``rmsprop`` or ``adam`` at ``learning_rate``."""
    import keras

    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    return optimizers[name](learning_rate=learning_rate)


def compile_model(
    model: keras.Model,
    optimizer: Optimizer,
    learning_rate: float,
    jit_compile: bool = True,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile for binary classification.

    Args:
        model: From :func:`build_model`.
        optimizer: ``rmsprop`` or ``adam``.
        learning_rate: The optimizer's learning rate.
        jit_compile: Compile the train step with XLA. Keras turns XLA off on CPU-only machines by
            default, but on CPU it is what makes the recurrent loop fast.
        steps_per_execution: Batches run per call of the compiled train function; more than one
            saves the Python round trip between small batches.

    Returns:
        The same model, compiled.
    """
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def configure_threads(threads: int) -> None:
    """Size TensorFlow's intra- and inter-op thread pools before its runtime starts.

    A step of the textbook model (a 32-unit recurrent cell over a batch of 128) is too small to
    split across cores. With a pool per core, XLA's second thread spins waiting for work; on the
    2-core machine, whenever it shared a core with the working thread, an epoch took twice as long.
    With dropout the second thread does some work, so tuned values can gain from more threads:
    ``benchmarks/README.md`` has both measurements.

    Args:
        threads: Threads per pool; 0 leaves TensorFlow's default (one per core).
    """
    if threads == 0:
        return
    import tensorflow as tf

    threading = tf.config.threading
    current = (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    )
    if current == (threads, threads):
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TensorFlow fixes its pools when it runs its first operation; only a test that trains
        # twice in one process gets here.
        log.warning(
            "TensorFlow is already running with %d intra- and %d inter-op threads; "
            "train.threads = %d takes effect in a new process",
            *current,
            threads,
        )
        return
    log.debug("TensorFlow thread pools: %d intra-op, %d inter-op", threads, threads)
