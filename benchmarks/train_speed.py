"""Plain ``model.fit`` against the train stage's training path: same data, batch size and epochs.

Run from the project root once ``data/processed`` exists (``dvc repro preprocess``)::

    python benchmarks/train_speed.py                      # the full comparison, ~5 min idle
    python benchmarks/train_speed.py --train-reviews 5000 --epochs 4    # a quick look
    python benchmarks/train_speed.py --tuned --pairs 1    # the tune stage's values, both paths

"Plain" is what a Keras user writes: the same model compiled with Keras' defaults (on a CPU-only
machine that means no XLA and one batch per call) and ``model.fit(x, y, validation_data=...)``.
"Ours" is the train stage's path, :func:`sentiment_rnn.train.build_compiled_model` and
:func:`sentiment_rnn.train.fit_model`. Both train the textbook setting (or with ``--tuned`` the
tune stage's values: the same dropout, optimizer, learning rate and batch size on both paths) for
the same number of epochs (no early stopping, so they run the same epochs) from the same seed.

Each pair of runs uses a new seed and alternates the order (plain first, then ours first), so a
busy spell on a shared machine slows both; every fit runs in a fresh Python process. The ratio of
seconds per epoch is the result (also printed: the ratio of median epochs, which a short spell of
other load barely moves); absolute times depend on the load, which the report prints. Exit status
1 if the whole-fit speedup misses the goal (1.3x unless ``--goal`` says otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sentiment_rnn import train
from sentiment_rnn.model import (
    STEPS_PER_EXECUTION,
    build_model,
    configure_threads,
    make_optimizer,
)
from sentiment_rnn.params import load_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    parser.add_argument("--variant", default="lstm", choices=["lstm", "rnn"])
    parser.add_argument("--epochs", type=int, default=None, help="default: train.epochs")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each path (default 2)")
    parser.add_argument(
        "--train-reviews", type=int, default=None, help="random subset of the training split"
    )
    parser.add_argument(
        "--tuned", action="store_true", help="train tuning/<variant>/best_params.json's values"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ours' TensorFlow threads (default: train.threads)",
    )
    parser.add_argument("--goal", type=float, default=1.3, help="required speedup (default 1.3)")
    parser.add_argument("--output", type=Path, default=None, help="also write the report as JSON")
    # Internal: run one fit in this process and print its result as JSON (see fit_in_subprocess).
    parser.add_argument("--one", nargs=2, metavar=("PATH", "SEED"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def fit_in_subprocess(argv: list[str], name: str, seed: int) -> dict[str, object]:
    """One fit in a fresh Python process, with this invocation's arguments.

    Each fit gets its own TensorFlow runtime (thread pools, allocator, compiled functions), so
    neither path inherits state or leftover work from the one that ran before it.
    """
    command = [sys.executable, __file__, *argv, "--one", name, str(seed)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{name} seed {seed} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def epoch_timer(seconds: list[float]):
    import keras

    started: list[float] = []
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: started.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs=None: seconds.append(time.perf_counter() - started[-1]),
    )


def run_plain(variant, seed, hyperparameters, preprocess, splits) -> dict[str, object]:
    """The same model and optimizer, compiled and fitted with Keras' defaults otherwise."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(
        variant,
        preprocess.num_words,
        preprocess.maxlen,
        hyperparameters.embedding_dim,
        hyperparameters.units,
        dropout=hyperparameters.dropout,
        recurrent_dropout=hyperparameters.recurrent_dropout,
    )
    model.compile(
        optimizer=make_optimizer(hyperparameters.optimizer, hyperparameters.learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    epochs: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(
        splits["train"].x,
        splits["train"].y,
        batch_size=hyperparameters.batch_size,
        epochs=hyperparameters.epochs,
        validation_data=(splits["validation"].x, splits["validation"].y),
        callbacks=[epoch_timer(epochs)],
        verbose=0,
    )
    return finish(model, started, cpu_started, epochs, splits)


def run_ours(variant, seed, hyperparameters, preprocess, splits) -> dict[str, object]:
    """The train stage's path: its thread pools, its compile settings and its fit call."""
    configure_threads(hyperparameters.threads)
    model = train.build_compiled_model(variant, seed, hyperparameters, preprocess)
    epochs: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    train.fit_model(
        model,
        splits["train"],
        splits["validation"],
        hyperparameters,
        callbacks=[epoch_timer(epochs)],
    )
    return finish(model, started, cpu_started, epochs, splits)


def finish(model, started: float, cpu_started: float, epochs: list[float], splits) -> dict:
    """Fit time (wall and CPU, all threads) and the test accuracy."""
    fit_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    test = splits["test"]
    probabilities = model.predict(test.x, batch_size=train.PREDICT_BATCH_SIZE, verbose=0).ravel()
    return {
        "fit_seconds": fit_seconds,
        "cpu_seconds": cpu_seconds,
        "epoch_seconds": epochs,
        "test_accuracy": train.classification_metrics(test.y, probabilities)["test_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.disable_interactive_logging()
    params = load_params(args.params)
    preprocess = params.preprocess
    # The textbook setting, or the tuned one; no early stopping, so both paths run exactly the
    # same epochs.
    base = params.train.model_copy(update={"use_tuned": args.tuned})
    base, _ = train.resolve_hyperparameters(base, args.variant)
    update: dict[str, object] = {"early_stopping": False, "epochs": args.epochs or base.epochs}
    if args.threads is not None:
        update["threads"] = args.threads
    hyperparameters = base.model_copy(update=update)
    splits = {name: train.load_split(name, preprocess) for name in ("train", "validation", "test")}
    if args.train_reviews and args.train_reviews < splits["train"].size:
        chosen = np.random.default_rng(0).choice(
            splits["train"].size, args.train_reviews, replace=False
        )
        full = splits["train"]
        splits["train"] = train.Split(full.name, full.path, full.x[chosen], full.y[chosen], "")

    paths = {"plain": run_plain, "ours": run_ours}
    if args.one:
        name, seed = args.one[0], int(args.one[1])
        result = paths[name](args.variant, seed, hyperparameters, preprocess, splits)
        print(json.dumps(result), flush=True)
        return 0

    print(
        f"{args.variant}{' (tuned values)' if args.tuned else ''}: {splits['train'].size} training "
        f"reviews, {hyperparameters.optimizer} at {hyperparameters.learning_rate:.4g}, batch "
        f"{hyperparameters.batch_size}, dropout {hyperparameters.dropout:.2f} / "
        f"{hyperparameters.recurrent_dropout:.2f}, {hyperparameters.epochs} epochs, "
        f"{args.pairs} pair(s); "
        f"jit_compile={hyperparameters.jit_compile}, steps_per_execution="
        f"{STEPS_PER_EXECUTION}, threads={hyperparameters.threads}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    results: dict[str, list[dict[str, object]]] = {"plain": [], "ours": []}
    for pair in range(args.pairs):
        seed = pair + 1
        order = ["plain", "ours"] if pair % 2 == 0 else ["ours", "plain"]
        for name in order:
            result = fit_in_subprocess(argv, name, seed)
            results[name].append(result)
            epochs = result["epoch_seconds"]
            print(
                f"  pair {pair + 1} {name:5s} seed {seed}: fit {result['fit_seconds']:6.1f} s "
                f"({result['cpu_seconds']:6.1f} CPU s), "
                f"epochs {' '.join(f'{value:.1f}' for value in epochs)} s, "
                f"test accuracy {result['test_accuracy']:.4f}",
                flush=True,
            )

    def per_epoch(name: str, skip_first: bool) -> float:
        values = [
            seconds
            for result in results[name]
            for seconds in result["epoch_seconds"][1 if skip_first else 0 :]
        ]
        return float(np.mean(values)) if values else float("nan")

    def median_epoch(name: str) -> float:
        # A spell of other load on a shared machine inflates a few epochs; the median of the
        # epochs after the first (tracing and XLA compilation) shows the steady pace without it.
        values = [seconds for result in results[name] for seconds in result["epoch_seconds"][1:]]
        return float(np.median(values)) if values else float("nan")

    report: dict[str, object] = {
        "variant": args.variant,
        "hyperparameters": hyperparameters.model_dump(),
        "train_reviews": splits["train"].size,
        "batch_size": hyperparameters.batch_size,
        "epochs": hyperparameters.epochs,
        "pairs": args.pairs,
        "load_average_end": os.getloadavg()[0],
    }
    for name in paths:
        fit_seconds = [float(result["fit_seconds"]) for result in results[name]]
        cpu_seconds = [float(result["cpu_seconds"]) for result in results[name]]
        report[name] = {
            "seconds_per_epoch": sum(fit_seconds) / (args.pairs * hyperparameters.epochs),
            "cpu_seconds_per_epoch": sum(cpu_seconds) / (args.pairs * hyperparameters.epochs),
            "seconds_per_epoch_after_first": per_epoch(name, skip_first=True),
            "first_epoch_seconds": float(np.mean([r["epoch_seconds"][0] for r in results[name]])),
            "median_epoch_seconds_after_first": median_epoch(name),
            "test_accuracy_mean": float(np.mean([r["test_accuracy"] for r in results[name]])),
        }
    plain, ours = report["plain"], report["ours"]
    report["speedup"] = plain["seconds_per_epoch"] / ours["seconds_per_epoch"]
    report["cpu_speedup"] = plain["cpu_seconds_per_epoch"] / ours["cpu_seconds_per_epoch"]
    report["speedup_after_first_epoch"] = (
        plain["seconds_per_epoch_after_first"] / ours["seconds_per_epoch_after_first"]
    )
    report["speedup_median_epoch"] = (
        plain["median_epoch_seconds_after_first"] / ours["median_epoch_seconds_after_first"]
    )
    report["test_accuracy_difference"] = ours["test_accuracy_mean"] - plain["test_accuracy_mean"]

    header = ("s/epoch", "CPU s/epoch", "s/epoch after 1st", "1st epoch s", "test acc")
    print(f"{'':6s}" + "".join(f"{title:>19s}" for title in header))
    for name in paths:
        row = report[name]
        values = (
            f"{row['seconds_per_epoch']:.2f}",
            f"{row['cpu_seconds_per_epoch']:.2f}",
            f"{row['seconds_per_epoch_after_first']:.2f}",
            f"{row['first_epoch_seconds']:.1f}",
            f"{row['test_accuracy_mean']:.4f}",
        )
        print(f"{name:6s}" + "".join(f"{value:>19s}" for value in values))
    print(
        f"speedup (plain / ours, seconds per epoch): {report['speedup']:.2f}x whole fit "
        f"({report['cpu_speedup']:.2f}x in CPU time), {report['speedup_after_first_epoch']:.2f}x "
        f"after the first epoch, {report['speedup_median_epoch']:.2f}x in the median epoch after "
        f"the first; test accuracy "
        f"ours - plain = {report['test_accuracy_difference']:+.4f}; load average at the end "
        f"{report['load_average_end']:.1f}"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["speedup"] >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
