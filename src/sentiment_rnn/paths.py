"""Where the pipeline reads and writes, relative to the project root.

DVC runs every stage from the folder that holds ``dvc.yaml``, so stage outputs are relative to the
current directory. The MLflow and Optuna stores are different: they must be shared by every run,
including ``dvc exp run --queue`` / ``--temp`` runs, which DVC executes in a copy of the repository
under ``.dvc/tmp/exps/``. :func:`store_root` maps such a copy back to the real repository.
"""

from __future__ import annotations

import os
from pathlib import Path

RAW_DIR = Path("data/raw")
ARCHIVE_NAME = "aclImdb_v1.tar.gz"
DOWNLOAD_CACHE_DIR = Path("data/download-cache")
PROCESSED_DIR = Path("data/processed")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
MODELS_DIR = Path("models")
TUNING_DIR = Path("tuning")
REPORTS_DIR = Path("reports")

SPLITS = ("train", "validation", "test")

# Overrides the root that holds the shared stores (mlflow.db, mlruns/, optuna/).
STORE_ROOT_ENV = "SENTIMENT_RNN_STORE_ROOT"


def store_root(start: str | Path | None = None) -> Path:
    """The repository root that holds the shared tracking and tuning stores.

    Args:
        start: The folder to resolve from; the current directory by default.

    Returns:
        ``$SENTIMENT_RNN_STORE_ROOT`` if set; else, inside a DVC experiment workspace
        (``<repo>/.dvc/tmp/exps/...``), ``<repo>``; else ``start`` itself.
    """
    override = os.environ.get(STORE_ROOT_ENV)
    if override:
        return Path(override).resolve()
    here = Path(start or Path.cwd()).resolve()
    parts = here.parts
    for index in range(len(parts) - 2):
        if parts[index : index + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:index])
    return here


def archive_path() -> Path:
    """The fetched archive, the fetch stage's DVC output."""
    return RAW_DIR / ARCHIVE_NAME


def split_path(split: str) -> Path:
    """The encoded split written by preprocess: arrays ``x`` (int32) and ``y`` (int8)."""
    return PROCESSED_DIR / f"{split}.npz"


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write a file through a temporary sibling and a rename, so readers never see half of it.

    Args:
        path: The destination; its folder is created if needed.
        data: Bytes, or text written as UTF-8.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
