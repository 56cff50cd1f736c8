"""Stage ``compare``: did the LSTM's extra cost buy accuracy? Report it and register both models.

Reads, for each variant in ``params.yaml`` ``variants``, what the train stage wrote:
``metrics/train-<v>.json`` (means and standard deviations over seeds), ``plots/train-<v>.csv``
(per-epoch history) and ``models/<v>/`` (Keras model, vocabulary, ``run.json``).

Writes ``reports/comparison.md`` and ``reports/comparison.csv`` (costs, accuracy, tuned values and
the LSTM / RNN ratios), ``reports/learning_curves.png`` and ``reports/accuracy_vs_time.png``, and
``metrics/compare.json`` for ``dvc metrics show``. In MLflow it logs a run ``compare``
(``stage=compare``) that links the compared ``train-<v>`` runs, logs each variant's raw-text pyfunc
model into it, registers them under ``registry.model_name`` and gives the variant with the better
validation accuracy the alias ``challenger`` (the test set is kept for reporting; ``promote``
decides on it). Run it with ``dvc repro compare`` or ``sentiment-rnn compare``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sentiment_rnn import paths, tracking
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import TUNABLE_KEYS, MlflowParams, Params, RegistryParams, Variant

log = logging.getLogger(__name__)

REPORT_MARKDOWN = paths.REPORTS_DIR / "comparison.md"
REPORT_CSV = paths.REPORTS_DIR / "comparison.csv"
LEARNING_CURVES_PNG = paths.REPORTS_DIR / "learning_curves.png"
ACCURACY_VS_TIME_PNG = paths.REPORTS_DIR / "accuracy_vs_time.png"
METRICS_FILE = paths.METRICS_DIR / "compare.json"

DISPLAY_NAMES = {"lstm": "LSTM", "rnn": "SimpleRNN"}
HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss")
RUN_KEYS = ("parent_run_id", "best_run_id", "best_seed", "hyperparameters", "tuned")


@dataclass(frozen=True)
class Quantity:
    """One row of the comparison table.

    Attributes:
        key: The metric's base name in ``metrics/train-<v>.json`` (``_mean``/``_std`` added).
        label: What the report calls it.
        kind: ``cost`` (compared by ratio) or ``quality`` (compared by difference).
        digits: Decimals shown in the report.
        has_std: Whether the metric comes as mean and standard deviation over seeds.
    """

    key: str
    label: str
    kind: str
    digits: int
    has_std: bool = True


QUANTITIES = (
    Quantity("params_total", "parameters", "cost", 0, has_std=False),
    Quantity("seconds_per_epoch", "training seconds per epoch", "cost", 2),
    Quantity("fit_seconds", "training seconds per seed", "cost", 1),
    Quantity("train_reviews_per_second", "training reviews per second", "cost", 0),
    Quantity("latency_p50_ms", "prediction latency p50 (ms)", "cost", 2),
    Quantity("latency_p95_ms", "prediction latency p95 (ms)", "cost", 2),
    Quantity("test_accuracy", "test accuracy", "quality", 4),
    Quantity("test_roc_auc", "test ROC AUC", "quality", 4),
    Quantity("val_accuracy", "validation accuracy (best epoch)", "quality", 4),
    Quantity("epochs_run", "epochs run", "cost", 1, has_std=False),
)


def metric_key(quantity: Quantity) -> str:
    """The key of a quantity's headline number (its mean over seeds, or the single value)."""
    if quantity.key == "params_total":
        return quantity.key
    return f"{quantity.key}_mean"


@dataclass(frozen=True)
class VariantResult:
    """What the train stage left for one variant.

    Attributes:
        variant: ``lstm`` or ``rnn``.
        metrics: ``metrics/train-<v>.json``.
        run: ``models/<v>/run.json``.
        history: ``plots/train-<v>.csv``.
        model_dir: ``models/<v>``.
    """

    variant: Variant
    metrics: dict[str, float]
    run: dict[str, Any]
    history: pd.DataFrame
    model_dir: Path

    @property
    def name(self) -> str:
        """The variant's display name."""
        return DISPLAY_NAMES.get(self.variant, self.variant)

    def mean(self, key: str) -> float:
        """A metric's mean over seeds (or its single value)."""
        return float(self.metrics.get(f"{key}_mean", self.metrics.get(key, math.nan)))

    def std(self, key: str) -> float:
        """A metric's standard deviation over seeds; 0 when the train stage did not give one."""
        return float(self.metrics.get(f"{key}_std", 0.0))


@dataclass
class Comparison:
    """The outcome of the stage.

    Attributes:
        results: The variants compared, in ``params.yaml`` order.
        headline: The flat numbers of ``metrics/compare.json``.
        verdict: The one-sentence answer.
        challenger: The variant that got the ``challenger`` alias.
        run_id: The MLflow comparison run.
        experiment_id: The MLflow experiment of the comparison run.
        versions: Registered model version per variant.
        mlflow_agrees: Whether the parent runs in MLflow hold the numbers of the metrics files
            (None when a parent run could not be read).
    """

    results: list[VariantResult]
    headline: dict[str, float | bool]
    verdict: str
    challenger: Variant
    run_id: str = ""
    experiment_id: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    mlflow_agrees: bool | None = None


def _read_json(path: Path, producer: str) -> dict[str, Any]:
    """A JSON object from a file another stage wrote; a missing or broken file is a user error."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `{producer}` first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg}); re-run `{producer}`") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object; re-run `{producer}`")
    return payload


def load_variant(variant: Variant) -> VariantResult:
    """Read one variant's train outputs and check they hold what the report needs.

    Args:
        variant: ``lstm`` or ``rnn``.

    Returns:
        The variant's metrics, run record, history and model folder.

    Raises:
        UserError: Naming the missing file or key and the command that makes it.
    """
    producer = f"dvc repro train@{variant}"
    metrics_path = paths.METRICS_DIR / f"train-{variant}.json"
    metrics = _read_json(metrics_path, producer)
    for quantity in QUANTITIES:
        key = metric_key(quantity)
        if key not in metrics:
            raise UserError(f"{metrics_path}: missing key '{key}'; re-run `{producer}`")
        if not isinstance(metrics[key], (int, float)):
            raise UserError(f"{metrics_path}: {key} = {metrics[key]!r} is not a number")

    model_dir = paths.MODELS_DIR / variant
    run_path = model_dir / "run.json"
    run = _read_json(run_path, producer)
    for key in RUN_KEYS:
        if key not in run:
            raise UserError(f"{run_path}: missing key '{key}'; re-run `{producer}`")
    for name in ("model.keras", "vocabulary.json"):
        if not (model_dir / name).is_file():
            raise UserError(f"{model_dir / name}: not found; run `{producer}` first")

    history_path = paths.PLOTS_DIR / f"train-{variant}.csv"
    try:
        history = pd.read_csv(history_path)
    except FileNotFoundError:
        raise UserError(f"{history_path}: not found; run `{producer}` first") from None
    missing = [column for column in HISTORY_COLUMNS if column not in history.columns]
    if missing:
        raise UserError(
            f"{history_path}: missing column(s) {', '.join(missing)}; re-run `{producer}`"
        )
    return VariantResult(variant, metrics, run, history, model_dir)


def judge(results: Sequence[VariantResult]) -> tuple[dict[str, float | bool], str, Variant]:
    """The headline numbers, the one-sentence answer and the challenger.

    The LSTM "bought" accuracy when its mean test accuracy beats the SimpleRNN's by more than the
    seed-to-seed spread of the difference, ``sqrt(std_lstm^2 + std_rnn^2)``.

    Args:
        results: The variants compared.

    Returns:
        ``(headline, verdict, challenger)``: the flat numbers of ``metrics/compare.json``, the
        sentence, and the variant with the best validation accuracy (fewer parameters on a tie).
    """
    # The headline only; reports/comparison.csv has every number.
    headline: dict[str, float | bool] = {}
    for result in results:
        variant = result.variant
        headline |= {
            f"{variant}_test_accuracy_mean": result.mean("test_accuracy"),
            f"{variant}_test_accuracy_std": result.std("test_accuracy"),
            f"{variant}_test_roc_auc_mean": result.mean("test_roc_auc"),
            f"{variant}_params_total": result.mean("params_total"),
            f"{variant}_seconds_per_epoch_mean": result.mean("seconds_per_epoch"),
            f"{variant}_latency_p50_ms_mean": result.mean("latency_p50_ms"),
        }
    challenger = max(
        results, key=lambda r: (r.mean("val_accuracy"), -r.mean("params_total"))
    ).variant

    by_variant = {result.variant: result for result in results}
    if not {"lstm", "rnn"} <= by_variant.keys():
        only = ", ".join(result.name for result in results)
        verdict = f"Only {only} was trained on this run, so there is nothing to compare."
        return headline, verdict, challenger

    lstm, rnn = by_variant["lstm"], by_variant["rnn"]
    gain = lstm.mean("test_accuracy") - rnn.mean("test_accuracy")
    spread = math.hypot(lstm.std("test_accuracy"), rnn.std("test_accuracy"))
    params_ratio = lstm.mean("params_total") / rnn.mean("params_total")
    time_ratio = lstm.mean("seconds_per_epoch") / rnn.mean("seconds_per_epoch")
    bought = gain > 0 and gain > spread
    headline.update(
        {
            "params_ratio": params_ratio,
            "seconds_per_epoch_ratio": time_ratio,
            "latency_p50_ratio": lstm.mean("latency_p50_ms") / rnn.mean("latency_p50_ms"),
            "accuracy_gain": gain,
            "accuracy_gain_spread": spread,
            "roc_auc_gain": lstm.mean("test_roc_auc") - rnn.mean("test_roc_auc"),
            "lstm_bought_accuracy": bought,
        }
    )

    cost = (
        f"for {params_ratio:.2f}x the parameters and {time_ratio:.2f}x the training time per "
        "epoch of the SimpleRNN"
    )
    numbers = (
        f"(test accuracy {lstm.mean('test_accuracy'):.4f} ± {lstm.std('test_accuracy'):.4f} "
        f"against {rnn.mean('test_accuracy'):.4f} ± {rnn.std('test_accuracy'):.4f}, "
        "mean ± std over seeds)"
    )
    points = abs(gain) * 100
    if bought:
        spread_note = (
            f", more than the seed-to-seed spread of {spread * 100:.2f} points"
            if spread > 0
            else "; with one seed each there is no seed-to-seed spread to judge it against"
        )
        verdict = f"Yes: {cost}, the LSTM gained {points:.2f} points {numbers}{spread_note}."
    elif gain > 0:
        verdict = (
            f"No: {cost}, the LSTM gained only {points:.2f} points {numbers}, within the "
            f"seed-to-seed spread of {spread * 100:.2f} points."
        )
    else:
        verdict = f"No: {cost}, the LSTM was {points:.2f} points less accurate {numbers}."
    return headline, verdict, challenger


def _format(value: float, digits: int) -> str:
    """A number for the report: thousands separators, fixed decimals, '-' when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _hyperparameter_names(results: Sequence[VariantResult]) -> list[str]:
    """The tuned keys in a stable order: the known ones first, then any others by name."""
    present = {key for result in results for key in result.run.get("hyperparameters", {})}
    known = [key for key in TUNABLE_KEYS if key in present]
    return known + sorted(present - set(known))


def comparison_table(comparison: Comparison) -> pd.DataFrame:
    """The long table behind both reports: one row per quantity, one column per variant.

    The ``lstm_vs_rnn`` column holds the LSTM / RNN ratio for costs and the LSTM minus RNN
    difference for accuracy; ``comparison`` says which.
    """
    results = comparison.results
    by_variant = {result.variant: result for result in results}
    both = {"lstm", "rnn"} <= by_variant.keys()
    rows: list[dict[str, Any]] = []
    for quantity in QUANTITIES:
        row: dict[str, Any] = {"quantity": metric_key(quantity)}
        for result in results:
            row[result.variant] = result.mean(quantity.key)
        if both:
            lstm, rnn = by_variant["lstm"].mean(quantity.key), by_variant["rnn"].mean(quantity.key)
            if quantity.kind == "cost":
                row["lstm_vs_rnn"] = lstm / rnn if rnn else math.nan
                row["comparison"] = "ratio"
            else:
                row["lstm_vs_rnn"] = lstm - rnn
                row["comparison"] = "difference"
        rows.append(row)
        if quantity.has_std:
            std_row: dict[str, Any] = {"quantity": f"{quantity.key}_std"}
            for result in results:
                std_row[result.variant] = result.std(quantity.key)
            rows.append(std_row)
    rows.append({"quantity": "tuned", **{r.variant: bool(r.run["tuned"]) for r in results}})
    for name in _hyperparameter_names(results):
        rows.append(
            {"quantity": name, **{r.variant: r.run["hyperparameters"].get(name) for r in results}}
        )
    for key in ("parent_run_id", "best_run_id", "best_seed"):
        rows.append({"quantity": key, **{r.variant: r.run[key] for r in results}})
    if comparison.versions:
        rows.append({"quantity": "registered_version", **comparison.versions})
    columns = ["quantity", *(r.variant for r in results)]
    if both:
        columns += ["lstm_vs_rnn", "comparison"]
    return pd.DataFrame(rows, columns=columns)


def _row(label: str, cells: Sequence[str]) -> str:
    """One Markdown table row."""
    return f"| {label} | " + " | ".join(cells) + " |"


def _difference(quantity: Quantity, lstm: float, rnn: float) -> str:
    """How the LSTM compares on one quantity: a ratio for costs, a difference for quality."""
    if quantity.kind == "cost":
        return f"{lstm / rnn:.2f}x" if rnn else "-"
    if "accuracy" in quantity.key:
        return f"{(lstm - rnn) * 100:+.2f} points"
    return f"{lstm - rnn:+.4f}"


def render_markdown(comparison: Comparison, model_name: str) -> str:
    """The human-readable report."""
    results = comparison.results
    by_variant = {result.variant: result for result in results}
    both = {"lstm", "rnn"} <= by_variant.keys()
    names = [result.name for result in results]
    lines = [
        "# LSTM vs SimpleRNN on IMDB",
        "",
        "**Did the LSTM's extra cost buy accuracy on this run?** " + comparison.verdict,
        "",
        "Means ± standard deviations over the training seeds; costs are compared by ratio, "
        "accuracy by difference.",
        "",
        _row("", [*names, *(["LSTM / RNN"] if both else [])]),
        _row("---", ["---:"] * (len(results) + both)),
    ]
    for quantity in QUANTITIES:
        cells = []
        for result in results:
            cell = _format(result.mean(quantity.key), quantity.digits)
            if quantity.has_std:
                cell += f" ± {_format(result.std(quantity.key), quantity.digits)}"
            cells.append(cell)
        if both:
            lstm, rnn = by_variant["lstm"], by_variant["rnn"]
            cells.append(_difference(quantity, lstm.mean(quantity.key), rnn.mean(quantity.key)))
        lines.append(_row(quantity.label, cells))

    lines += ["", "## Hyperparameters", "", _row("", names), _row("---", ["---:"] * len(results))]
    lines.append(
        _row("tuned by Optuna", ["yes" if r.run["tuned"] else "no (params.yaml)" for r in results])
    )
    for name in _hyperparameter_names(results):
        cells = []
        for result in results:
            value = str(result.run["hyperparameters"].get(name, "-"))
            # train's run.json may name the keys Optuna chose (beyond the contract's fields).
            cells.append(f"{value} (tuned)" if name in result.run.get("tuned_keys", ()) else value)
        lines.append(_row(name, cells))

    lines += [
        "",
        "## Plots",
        "",
        f"![Learning curves of both variants]({LEARNING_CURVES_PNG.name})",
        "",
        f"![Test accuracy against training time]({ACCURACY_VS_TIME_PNG.name})",
        "",
        "## Runs and models",
        "",
    ]
    for result in results:
        version = comparison.versions.get(result.variant, "-")
        lines.append(
            f"- {result.name}: MLflow run `train-{result.variant}` "
            f"`{result.run['parent_run_id']}`, best seed {result.run['best_seed']} "
            f"(run `{result.run['best_run_id']}`), registered as `{model_name}` "
            f"version {version}."
        )
    lines.append(
        f"- Challenger: {DISPLAY_NAMES.get(comparison.challenger, comparison.challenger)} "
        "(higher validation accuracy), alias `challenger`; `sentiment-rnn promote` decides "
        "whether it becomes `champion`."
    )
    if comparison.run_id:
        lines.append(f"- Comparison run `{comparison.run_id}` (tag stage=compare).")
    if comparison.mlflow_agrees is not None:
        lines.append(
            "- The MLflow parent runs hold the same numbers."
            if comparison.mlflow_agrees
            else "- WARNING: the MLflow parent runs do not hold the numbers of "
            "metrics/train-*.json; see the compare stage's log."
        )
    if comparison.experiment_id:
        parent_ids = ", ".join(f'"{r.run["parent_run_id"]}"' for r in results)
        lines.append(
            "- MLflow compare view of the parent runs (`mlflow ui --backend-store-uri "
            "sqlite:///mlflow.db`): "
            f'`/#/compare-runs?runs=[{parent_ids}]&experiments=["{comparison.experiment_id}"]`'
        )
    return "\n".join(lines) + "\n"


def _save_figure(figure: Any, path: Path) -> None:
    """Render a Matplotlib figure to PNG and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    paths.write_atomically(path, buffer.getvalue())


def plot_learning_curves(results: Sequence[VariantResult], path: Path) -> None:
    """Accuracy and loss per epoch of every variant, training dashed and validation solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, result in enumerate(results):
        color = f"C{index}"
        history = result.history
        for axis, metric in ((accuracy_axis, "accuracy"), (loss_axis, "loss")):
            axis.plot(
                history["epoch"],
                history[f"val_{metric}"],
                color=color,
                marker="o",
                label=f"{result.name} validation",
            )
            axis.plot(
                history["epoch"],
                history[metric],
                color=color,
                linestyle="--",
                label=f"{result.name} training",
            )
    for axis, title in ((accuracy_axis, "Accuracy"), (loss_axis, "Loss (binary cross-entropy)")):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("Learning curves (mean over seeds)")
    _save_figure(figure, path)
    plt.close(figure)


def plot_accuracy_vs_time(results: Sequence[VariantResult], path: Path) -> None:
    """Test accuracy against training time per seed, error bars one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for index, result in enumerate(results):
        axis.errorbar(
            result.mean("fit_seconds"),
            result.mean("test_accuracy"),
            xerr=result.std("fit_seconds"),
            yerr=result.std("test_accuracy"),
            fmt="o",
            markersize=8,
            capsize=4,
            color=f"C{index}",
            label=result.name,
        )
        axis.annotate(
            f"{result.name}\n{int(result.mean('params_total')):,} parameters",
            (result.mean("fit_seconds"), result.mean("test_accuracy")),
            textcoords="offset points",
            xytext=(10, 6),
        )
    axis.set_xlabel("training time per seed (s)")
    axis.set_ylabel("test accuracy")
    axis.set_title("Accuracy against training time")
    axis.grid(alpha=0.3)
    axis.margins(x=0.35, y=0.3)
    axis.legend(loc="lower right")
    _save_figure(figure, path)
    plt.close(figure)


def _check_parent_runs(client: Any, results: Sequence[VariantResult]) -> bool | None:
    """Whether each ``train-<v>`` run in MLflow logged the same numbers as the metrics file.

    Returns:
        True if every shared metric matches, False if one differs, None if a run is missing.
    """
    from mlflow.exceptions import MlflowException

    agrees = True
    for result in results:
        run_id = result.run["parent_run_id"]
        try:
            logged = client.get_run(run_id).data.metrics
        except MlflowException:
            log.warning("MLflow run %s (train-%s) is not in this store", run_id, result.variant)
            return None
        for key, value in result.metrics.items():
            if key in logged and not math.isclose(logged[key], value, rel_tol=1e-6, abs_tol=1e-9):
                log.warning(
                    "train-%s: MLflow has %s = %s but %s has %s",
                    result.variant,
                    key,
                    logged[key],
                    f"metrics/train-{result.variant}.json",
                    value,
                )
                agrees = False
    return agrees


def register_models(comparison: Comparison, client: Any, model_name: str) -> dict[str, str]:
    """Log each variant's raw-text model into the active run and register it.

    Returns:
        Registered version per variant.
    """
    import mlflow

    from sentiment_rnn import serving

    versions: dict[str, str] = {}
    for result in comparison.results:
        tags = {
            "variant": result.variant,
            "test_accuracy_mean": f"{result.mean('test_accuracy'):.6f}",
            "test_roc_auc_mean": f"{result.mean('test_roc_auc'):.6f}",
            "val_accuracy_mean": f"{result.mean('val_accuracy'):.6f}",
            "params_total": str(int(result.mean("params_total"))),
            "tuned": str(bool(result.run["tuned"])).lower(),
            "train_run_id": str(result.run["parent_run_id"]),
            "best_run_id": str(result.run["best_run_id"]),
            "best_seed": str(result.run["best_seed"]),
            "compare_run_id": comparison.run_id,
        }
        info = serving.log_text_model(f"text-{result.variant}", result.model_dir, tags=tags)
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
        versions[result.variant] = str(version.version)
        log.info("registered %s as %s version %s", result.variant, model_name, version.version)
    client.update_registered_model(
        model_name,
        description=(
            "Raw-text IMDB sentiment classifiers (LSTM and SimpleRNN). Input: a table with a "
            "'text' column; output: probability and label (1 positive)."
        ),
    )
    return versions


def main(
    variants: Sequence[Variant], mlflow_params: MlflowParams, registry: RegistryParams
) -> Comparison:
    """Compare the trained variants, write the reports, register the models.

    Args:
        variants: The variants to compare (``params.yaml`` ``variants``).
        mlflow_params: The experiment to log the comparison run into.
        registry: The registered model name.

    Returns:
        The comparison, with the MLflow run id and registered versions.

    Raises:
        UserError: If a train output is missing or incomplete.
    """
    import mlflow
    from mlflow import MlflowClient

    from sentiment_rnn.registry import CHALLENGER

    results = [load_variant(variant) for variant in variants]
    log.info("comparing %s", ", ".join(result.name for result in results))
    headline, verdict, challenger = judge(results)
    comparison = Comparison(results, headline, verdict, challenger)

    comparison.experiment_id = tracking.configure(mlflow_params.experiment)
    client = MlflowClient()
    comparison.mlflow_agrees = _check_parent_runs(client, results)
    parent_ids = {result.variant: str(result.run["parent_run_id"]) for result in results}
    run_tags = {
        "stage": "compare",
        "git_commit": tracking.git_commit(),
        "compared_run_ids": ",".join(parent_ids.values()),
        **{f"run_id.{variant}": run_id for variant, run_id in parent_ids.items()},
        "challenger_variant": challenger,
    }
    with mlflow.start_run(run_name="compare", tags=run_tags) as run:
        comparison.run_id = run.info.run_id
        mlflow.log_params(
            {
                **{f"{variant}_parent_run_id": run_id for variant, run_id in parent_ids.items()},
                **{f"{r.variant}_best_run_id": str(r.run["best_run_id"]) for r in results},
                "registered_model": registry.model_name,
            }
        )
        mlflow.log_metrics({key: float(value) for key, value in headline.items()})
        comparison.versions = register_models(comparison, client, registry.model_name)
        client.set_registered_model_alias(
            registry.model_name, CHALLENGER, comparison.versions[challenger]
        )
        mlflow.set_tags(
            {
                f"registered_version.{variant}": version
                for variant, version in comparison.versions.items()
            }
        )

        markdown = render_markdown(comparison, registry.model_name)
        paths.write_atomically(REPORT_MARKDOWN, markdown)
        paths.write_atomically(REPORT_CSV, comparison_table(comparison).to_csv(index=False))
        plot_learning_curves(results, LEARNING_CURVES_PNG)
        plot_accuracy_vs_time(results, ACCURACY_VS_TIME_PNG)
        paths.write_atomically(METRICS_FILE, json.dumps(headline, indent=2) + "\n")
        for report in (REPORT_MARKDOWN, REPORT_CSV, LEARNING_CURVES_PNG, ACCURACY_VS_TIME_PNG):
            mlflow.log_artifact(str(report), artifact_path="reports")
        mlflow.set_tag("mlflow.note.content", markdown)

    log.info(
        "compare: challenger %s (version %s), reports in %s/. %s",
        challenger,
        comparison.versions[challenger],
        paths.REPORTS_DIR,
        verdict,
    )
    return comparison


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """``sentiment-rnn compare``."""
    main(params.variants, params.mlflow, params.registry)
    return 0
