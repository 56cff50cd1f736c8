"""``sentiment-rnn retrain``: the scheduled job. Refresh the data, ``dvc repro``, promote.

1. Refresh: re-run the ``fetch`` stage (``dvc repro --force fetch``), so the archive is fetched
   and its sha256 checked again; an upstream file that changed or vanished fails here, loudly.
   When the archive is unchanged its hash is too, and DVC re-runs nothing downstream for it.
2. ``dvc repro``: rebuild whatever the data, parameters or code changed, up to the compare stage,
   which registers both variants and points ``challenger`` at the better one.
3. Promote: move ``champion`` only if the challenger beats it on the current test data.

A lock (``<store root>/.retrain.lock``, taken without waiting) keeps two runs from overlapping;
a second run logs that and exits 0, as a skipped run is not a failure. The job logs one summary
line and exits non-zero only when a step fails. Run it from the project root, e.g. from cron:

    17 3 * * 1  cd /path/to/sentiment-rnn && .venv/bin/sentiment-rnn retrain >> retrain.log 2>&1
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sentiment_rnn import paths
from sentiment_rnn.params import Params

log = logging.getLogger(__name__)

LOCK_NAME = ".retrain.lock"
Step = Callable[[], None]


class StepFailed(Exception):
    """A step of the job failed; the message says which and how."""


@dataclass(frozen=True)
class RetrainResult:
    """What the job did.

    Attributes:
        status: ``done``, ``skipped`` (another run held the lock) or ``failed``.
        summary: The one-line summary that was logged.
        promoted: Whether ``champion`` moved (None unless the promote step ran).
        champion_version: The champion after the run (None unless the promote step ran).
    """

    status: str
    summary: str
    promoted: bool | None = None
    champion_version: str | None = None


def lock_path() -> Path:
    """The lock file, beside the shared stores so every checkout of the project sees it."""
    return paths.store_root() / LOCK_NAME


def dvc(*arguments: str) -> list[str]:
    """A DVC command line run with this interpreter, so it works without an activated venv."""
    return [sys.executable, "-m", "dvc", *arguments]


def _display(command: Sequence[str]) -> str:
    """A command as a person would type it (``dvc ...`` rather than ``python -m dvc ...``)."""
    prefix = dvc()
    if list(command[: len(prefix)]) == prefix:
        return " ".join(["dvc", *command[len(prefix) :]])
    return " ".join(command)


def run_command(command: Sequence[str]) -> None:
    """Run a command, its output passing through to ours.

    The interpreter's folder goes first on ``PATH`` so the stage commands in ``dvc.yaml``
    (``sentiment-rnn ...``) resolve to this installation even from cron, where no venv is active.

    Raises:
        StepFailed: If the command exits non-zero or cannot start.
    """
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), environment.get("PATH", "")]
    )
    log.info("running: %s", _display(command))
    try:
        completed = subprocess.run(list(command), env=environment, check=False)
    except OSError as error:
        raise StepFailed(f"could not start {command[0]}: {error}") from None
    if completed.returncode != 0:
        raise StepFailed(f"`{_display(command)}` exited with status {completed.returncode}")


def refresh_data() -> None:
    """Fetch the archive again and check its sha256 (DVC skips downstream stages if unchanged)."""
    run_command(dvc("repro", "--force", "fetch"))


def reproduce() -> None:
    """``dvc repro``: rebuild what changed, through compare (registration, ``challenger``)."""
    run_command(dvc("repro"))


def main(
    params: Params,
    *,
    refresh: Step = refresh_data,
    repro: Step = reproduce,
    lock_file: Path | None = None,
) -> RetrainResult:
    """Run the scheduled job once, unless another run holds the lock.

    Args:
        params: The parameters (registry name, margin, experiment).
        refresh: The data refresh step; tests of the lock and of promotion replace it.
        repro: The ``dvc repro`` step; tests of the lock and of promotion replace it.
        lock_file: The lock; :func:`lock_path` by default.

    Returns:
        What happened, with the summary line.

    Raises:
        UserError: From promote (no challenger, no test data), after the lock is released.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_file or lock_path()))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        summary = f"retrain: skipped: another retrain holds {lock.lock_file}; nothing done"
        log.warning(summary)
        return RetrainResult("skipped", summary)

    started = time.perf_counter()
    timings: list[str] = []
    step_name = "refresh"
    try:
        for step_name, step in (("refresh", refresh), ("dvc repro", repro)):
            step_started = time.perf_counter()
            log.info("retrain: %s", step_name)
            step()
            timings.append(f"{step_name} {time.perf_counter() - step_started:.0f} s")
        step_name = "promote"
        from sentiment_rnn import promote

        decision = promote.main(params.registry, params.mlflow)
    except StepFailed as error:
        summary = (
            f"retrain: failed at {step_name} after {time.perf_counter() - started:.0f} s: {error}"
        )
        log.error(summary)
        return RetrainResult("failed", summary)
    except Exception as error:
        # A user error or a crash in promote still ends the job with its one summary line.
        log.error(
            "retrain: failed at %s after %.0f s: %s",
            step_name,
            time.perf_counter() - started,
            error,
        )
        raise
    finally:
        lock.release()

    outcome = (
        f"champion -> version {decision.champion_version}"
        if decision.promoted
        else f"champion stays version {decision.champion_version}"
    )
    summary = (
        f"retrain: done in {time.perf_counter() - started:.0f} s ({', '.join(timings)}); "
        f"{outcome}: {decision.reason}"
    )
    log.info(summary)
    return RetrainResult("done", summary, decision.promoted, decision.champion_version)


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """``sentiment-rnn retrain``: exit 1 if a step failed, 0 if done or skipped."""
    result = main(params)
    return 1 if result.status == "failed" else 0
