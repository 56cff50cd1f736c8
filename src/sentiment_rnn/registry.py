"""MLflow Model Registry look-ups shared by compare, promote and predict.

The registry holds every variant's raw-text model under one name (``registry.model_name``). Two
aliases matter: ``challenger`` (the better variant of the latest comparison, set by ``compare``)
and ``champion`` (the model in use, moved only by ``promote``). MLflow is imported inside the
functions, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_rnn import tracking
from sentiment_rnn.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
_SQLITE_PREFIX = "sqlite:///"


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, or None for any other store."""
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    return Path(uri[len(_SQLITE_PREFIX) :])


def require_store() -> str:
    """Point MLflow at the tracking store, refusing to create an empty one by accident.

    MLflow creates a missing SQLite file silently; a command that only reads the registry would
    then report "no model" instead of the real problem, a store that is not where it looks.

    Returns:
        The tracking URI.

    Raises:
        UserError: If the URI names a SQLite file that does not exist.
    """
    import mlflow

    uri = tracking.tracking_uri()
    database = sqlite_store_path(uri)
    if database is not None and not database.is_file():
        raise UserError(
            f"no MLflow store at {database}: run `dvc repro` from the project root (the compare "
            f"stage registers the models), or set {tracking.TRACKING_URI_ENV} to your store"
        )
    mlflow.set_tracking_uri(uri)
    return uri


def alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The model version an alias points to, or None if the model or the alias does not exist.

    Args:
        client: An MLflow client on the store.
        model_name: The registered model's name.
        alias: ``champion``, ``challenger`` or any other alias.

    Returns:
        The version, or None.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = registered.aliases.get(alias)
    if version is None:
        return None
    return client.get_model_version(model_name, str(version))


def require_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion:
    """Like :func:`alias_version`, but a missing model or alias is a user error.

    Raises:
        UserError: Naming the model, the alias and the command that would create it.
    """
    version = alias_version(client, model_name, alias)
    if version is not None:
        return version
    fix = (
        "run `sentiment-rnn promote` after `dvc repro`"
        if alias == CHAMPION
        else "run `dvc repro` (the compare stage sets it)"
        if alias == CHALLENGER
        else "pick an existing alias with --alias"
    )
    raise UserError(
        f"registered model {model_name!r} has no alias {alias!r} in {tracking.tracking_uri()}; "
        f"{fix}"
    )


def alias_uri(model_name: str, alias: str) -> str:
    """The ``models:/<name>@<alias>`` URI that MLflow's loaders and CLI take."""
    return f"models:/{model_name}@{alias}"
