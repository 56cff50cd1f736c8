"""Typed, validated parameters read from ``params.yaml``.

Every stage takes one of the section models below. Loading fails with a one-line
:class:`~sentiment_rnn.errors.UserError` that names the file, the key, the value and what is
allowed, for an unknown key (a typo), a missing key or a bad value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentiment_rnn.errors import UserError

Variant = Literal["lstm", "rnn"]
Optimizer = Literal["rmsprop", "adam"]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]

DEFAULT_PARAMS_FILE = Path("params.yaml")

# The train.* keys the tune stage searches and may replace: the keys of best_params.json, in the
# order the reports list them.
TUNABLE_KEYS = (
    "learning_rate",
    "optimizer",
    "batch_size",
    "dropout",
    "recurrent_dropout",
    "units",
    "embedding_dim",
)


class _Section(BaseModel):
    """Base for every section: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class DataParams(_Section):
    """Where the raw archive comes from and which extra labelled reviews join training."""

    url: str = Field(min_length=1)
    sha256: str
    extra: list[str] = Field(default_factory=list)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(
                f"expected 64 hexadecimal digits (got {len(value)} characters), the archive's "
                "SHA-256 as `sha256sum` prints it"
            )
        return value


class PreprocessParams(_Section):
    """Vocabulary size, sequence length and the train/validation split."""

    num_words: Annotated[int, Field(ge=4)]
    maxlen: PositiveInt
    validation_fraction: Fraction
    seed: Annotated[int, Field(ge=0)]


class TrainParams(_Section):
    """Model sizes and the fit settings shared by both variants."""

    embedding_dim: PositiveInt
    units: PositiveInt
    optimizer: Optimizer
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    batch_size: PositiveInt
    epochs: PositiveInt
    dropout: Rate
    recurrent_dropout: Rate
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    early_stopping: bool
    patience: Annotated[int, Field(ge=0)]
    use_tuned: bool
    jit_compile: bool
    threads: Annotated[int, Field(ge=0)]

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds


class FloatRange(_Section):
    """A continuous search range."""

    low: Annotated[float, Field(ge=0.0)]
    high: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class SearchSpace(_Section):
    """The Optuna search space; a list with one choice is not searched."""

    learning_rate: FloatRange
    optimizer: Annotated[list[Optimizer], Field(min_length=1)]
    batch_size: Annotated[list[PositiveInt], Field(min_length=1)]
    dropout: FloatRange
    recurrent_dropout: FloatRange
    units: Annotated[list[PositiveInt], Field(min_length=1)]
    embedding_dim: Annotated[list[PositiveInt], Field(min_length=1)]

    @field_validator("learning_rate")
    @classmethod
    def _positive_rate(cls, value: FloatRange) -> FloatRange:
        if value.low <= 0.0:
            raise ValueError("learning_rate.low must be above 0 (it is searched on a log scale)")
        return value

    @field_validator("dropout", "recurrent_dropout")
    @classmethod
    def _below_one(cls, value: FloatRange) -> FloatRange:
        if value.high >= 1.0:
            raise ValueError("a dropout rate must stay below 1")
        return value


class TuneParams(_Section):
    """The Optuna study's budget, storage and search space."""

    n_trials: PositiveInt
    epochs: PositiveInt
    timeout_s: PositiveInt
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    seed: Annotated[int, Field(ge=0)]
    # MedianPruner: trials that must finish before pruning starts, and the first epoch it may act.
    pruner_startup_trials: Annotated[int, Field(ge=0)] = 3
    pruner_warmup_epochs: Annotated[int, Field(ge=1)] = 2
    storage: str | None
    space: SearchSpace


class MlflowParams(_Section):
    """MLflow experiment naming; the tracking URI comes from the environment or the default."""

    experiment: str = Field(min_length=1)


class RegistryParams(_Section):
    """Model registry name and the promotion threshold."""

    model_name: str = Field(min_length=1)
    min_delta: Annotated[float, Field(ge=0.0, lt=1.0)]


class Params(_Section):
    """All of ``params.yaml``."""

    variants: Annotated[list[Variant], Field(min_length=1)]
    data: DataParams
    preprocess: PreprocessParams
    train: TrainParams
    tune: TuneParams
    mlflow: MlflowParams
    registry: RegistryParams


def _describe(error: dict[str, Any], source: str) -> str:
    """Turn one pydantic error into 'file: key = value: what is allowed'."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    key = key.lstrip(".") or "<top level>"
    kind = error["type"]
    if kind == "missing":
        return f"{source}: missing key '{key}'; add it (see the README for the default)"
    if kind == "extra_forbidden":
        parent = error["loc"][:-1]
        return (
            f"{source}: unknown key '{key}'; allowed here: "
            f"{', '.join(_allowed_keys(parent))} (is it a typo?)"
        )
    message = error["msg"]
    # pydantic prefixes messages raised by our validators with this boilerplate.
    message = message.removeprefix("Value error, ")
    return f"{source}: {key} = {error.get('input')!r}: {message}"


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    """The field names of the section at ``location`` (top level when empty)."""
    model: type[BaseModel] = Params
    for part in location:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


def parse_params(raw: Any, source: str = str(DEFAULT_PARAMS_FILE)) -> Params:
    """Validate an already parsed mapping.

    Args:
        raw: The parsed YAML document.
        source: The file name used in error messages.

    Returns:
        The validated parameters.

    Raises:
        UserError: On the first unknown key, missing key or bad value.
    """
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc.errors()[0], source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file.

    Args:
        path: The YAML file, ``params.yaml`` by default.

    Returns:
        The validated parameters.

    Raises:
        UserError: If the file is missing, is not YAML, or fails validation.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{path}: no such parameters file; run from the project root or pass --params"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}; fix the syntax") from None
    return parse_params(raw, str(path))
