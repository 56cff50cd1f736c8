"""The ``sentiment-rnn`` console script: one subcommand per pipeline stage, plus serving jobs.

Stage modules are imported only when their subcommand runs, so ``--help`` and the commands that do
not train never load TensorFlow. A :class:`~sentiment_rnn.errors.UserError` is printed as one line
on standard error with exit status 2; no traceback for a mistake the user can fix.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from sentiment_rnn import __version__
from sentiment_rnn.errors import UserError

log = logging.getLogger("sentiment_rnn")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _run_stage(module: str) -> Callable[[argparse.Namespace], int | None]:
    """A handler that loads params and calls ``sentiment_rnn.<module>.run_cli(args, params)``."""

    def handler(args: argparse.Namespace) -> int | None:
        from sentiment_rnn.params import load_params

        params = load_params(args.params)
        stage = importlib.import_module(f"sentiment_rnn.{module}")
        return stage.run_cli(args, params)

    return handler


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sentiment-rnn",
        description=(
            "Reproduce, tune and compare LSTM and SimpleRNN sentiment classifiers on IMDB. "
            "The stages are normally run by `dvc repro`; each is also a subcommand here."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--params", default="params.yaml", help="parameters file (default: params.yaml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "fetch", help="download (or copy) the review archive and check its sha256"
    ).set_defaults(handler=_run_stage("fetch"))
    commands.add_parser(
        "preprocess", help="read, tokenise, encode and split the reviews"
    ).set_defaults(handler=_run_stage("preprocess"))

    for name, text in (
        ("tune", "search hyperparameters of one variant with Optuna"),
        ("train", "train one variant over the seeds and log it to MLflow"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--variant", required=True, choices=["lstm", "rnn"])
        sub.set_defaults(handler=_run_stage(name))

    commands.add_parser(
        "compare", help="compare the trained variants, write reports/, register the models"
    ).set_defaults(handler=_run_stage("compare"))
    commands.add_parser(
        "promote", help="move the champion alias to the challenger if it is better"
    ).set_defaults(handler=_run_stage("promote"))

    predict = commands.add_parser("predict", help="classify reviews with a registered model")
    predict.add_argument("texts", nargs="*", help="reviews to classify (default: standard input)")
    predict.add_argument("--file", help="a file with one review per line ('-' for stdin)")
    predict.add_argument("--alias", default="champion", help="registry alias (default: champion)")
    predict.add_argument("--json", action="store_true", help="print JSON lines")
    predict.set_defaults(handler=_run_stage("predict"))

    commands.add_parser(
        "retrain", help="scheduled job: refresh the data, dvc repro, promote (holds a lock)"
    ).set_defaults(handler=_run_stage("retrain"))
    return parser


def configure_logging(verbose: bool) -> None:
    """Log to standard error; quieten TensorFlow's C++ start-up chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "urllib3", "matplotlib", "PIL", "git", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 on success, 2 for a user error, 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        status = args.handler(args)
    except UserError as error:
        print(f"sentiment-rnn {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sentiment-rnn {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
