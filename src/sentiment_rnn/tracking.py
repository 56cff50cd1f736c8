"""MLflow set-up shared by the stages that log runs.

Default store: SQLite at the repository root (``sqlite:///<root>/mlflow.db``) with artifacts in
``<root>/mlruns``; ``MLFLOW_TRACKING_URI`` overrides it for a shared server. The root comes from
:func:`sentiment_rnn.paths.store_root`, so queued and temporary DVC experiments log into the same
store as the workspace. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

from sentiment_rnn.paths import store_root

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri(root: Path | None = None) -> str:
    """The SQLite store at the repository root."""
    root = root or store_root()
    return f"sqlite:///{(root / 'mlflow.db').as_posix()}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the SQLite store at the repository root."""
    return os.environ.get(TRACKING_URI_ENV) or default_tracking_uri()


def configure(experiment: str) -> str:
    """Point MLflow at the store and select (creating if needed) the experiment.

    Args:
        experiment: The experiment name from ``params.yaml``.

    Returns:
        The experiment id.
    """
    import mlflow

    # Read before set_tracking_uri, which exports the variable itself.
    user_uri = os.environ.get(TRACKING_URI_ENV)
    uri = user_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # Two processes started at once on a fresh SQLite store (parallel tune workers) would both
    # create its tables and the experiment, and one would fail; a lock beside the file lets one
    # do it while the other waits.
    with _sqlite_setup_lock(uri):
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            artifact_location = None
            if not user_uri:
                artifact_location = (store_root() / "mlruns").as_uri()
            experiment_id = mlflow.create_experiment(
                experiment, artifact_location=artifact_location
            )
    mlflow.set_experiment(experiment_id=experiment_id)
    log.info("MLflow: experiment %r (id %s) in %s", experiment, experiment_id, uri)
    return experiment_id


def _sqlite_setup_lock(uri: str) -> contextlib.AbstractContextManager[object]:
    """A file lock ``<database>-lock`` for a local SQLite store; no lock for other stores."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(uri.removeprefix("sqlite:///") + "-lock", timeout=300)


def git_commit() -> str:
    """The current commit of the repository, or ``unknown`` outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"
