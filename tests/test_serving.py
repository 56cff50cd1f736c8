"""The raw-text pyfunc: same numbers as the trained path, and `sentiment-rnn predict`, `mlflow
models predict` and `mlflow models serve` all answering through the registered champion."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from sentiment_rnn import cli, serving, text
from tiny_project import REGISTRY, register, store_at, tiny_models

REPO = Path(__file__).resolve().parents[1]
MLFLOW = Path(sys.executable).with_name("mlflow")
REVIEWS = [
    "A wonderful, moving film. The best story, superb actors!",
    "Dull and boring: the worst plot, a terrible waste of time.",
    "<br />Great, brilliant and superb: I loved this movie, the best!",
    "",
]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory):
    return tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, models) -> Iterator[Path]:
    """A tracking store whose champion is the good tiny LSTM (version 1)."""
    root = tmp_path_factory.mktemp("serving-store")
    with store_at(root):
        register(models.good, alias="champion")
        yield root


def _params_file(root: Path) -> Path:
    """The project's params.yaml with the test registry name."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["registry"]["model_name"] = REGISTRY.model_name
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def trained_path_probabilities(model_dir: Path, reviews: list[str]) -> np.ndarray:
    """What the training code computes: encode with the vocabulary, call the Keras model."""
    import keras

    model = keras.saving.load_model(model_dir / "model.keras")
    vocabulary = text.Vocabulary.load(model_dir / "vocabulary.json")
    sequences = text.encode_texts(reviews, vocabulary, int(model.input_shape[1]))
    return model.predict(sequences, verbose=0).reshape(-1)


def test_served_model_gives_the_trained_numbers(store: Path, models) -> None:
    import mlflow

    served = mlflow.pyfunc.load_model(f"models:/{REGISTRY.model_name}@champion")
    # Extra columns (an id, a label) are ignored; the text column is found by name.
    frame = pd.DataFrame({"id": range(len(REVIEWS)), "text": REVIEWS, "label": [1, 0, 1, 0]})
    output = served.predict(frame)

    assert list(output.columns) == ["probability", "label"]
    expected = trained_path_probabilities(models.good, REVIEWS)
    np.testing.assert_allclose(output["probability"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(output["label"], (expected > 0.5).astype(int))
    assert output["label"].tolist()[:3] == [1, 0, 1]

    # The shipped package copy is what a fresh process would import.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTRY.model_name}@champion"))
    assert (local / "code" / "sentiment_rnn" / "text.py").read_text() == (
        REPO / "src" / "sentiment_rnn" / "text.py"
    ).read_text()
    assert not list((local / "code").rglob("__pycache__"))


def test_texts_of_accepts_tables_lists_and_strings() -> None:
    assert serving.texts_of(pd.DataFrame({"text": ["a", None]})) == ["a", ""]
    assert serving.texts_of(["a", "b"]) == ["a", "b"]
    assert serving.texts_of(np.array(["a"])) == ["a"]
    assert serving.texts_of("one review") == ["one review"]
    with pytest.raises(ValueError, match="expected a column 'text'"):
        serving.texts_of(pd.DataFrame({"review": ["a"]}))


def test_predict_command_prints_label_and_probability(
    store: Path, models, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    params = str(_params_file(store))
    expected = trained_path_probabilities(models.good, ["a wonderful, moving film"])[0]

    assert cli.main(["--params", params, "predict", "a wonderful, moving film"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("positive") and f"{expected:.4f}" in line

    reviews = store / "reviews.txt"
    reviews.write_text("\n".join(REVIEWS[:2]) + "\n\n", encoding="utf-8")
    assert cli.main(["--params", params, "predict", "--json", "--file", str(reviews)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["sentiment"] for row in rows] == ["positive", "negative"]
    assert rows[0]["version"] == "1" and rows[0]["text"] == REVIEWS[0]

    monkeypatch.setattr(sys, "stdin", io.StringIO("dull, boring, the worst\n"))
    assert cli.main(["--params", params, "predict"]) == 0
    assert capsys.readouterr().out.startswith("negative")


def test_predict_errors_are_one_line(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    params = str(_params_file(store))

    def error_of(*arguments: str) -> str:
        assert cli.main(["--params", params, "predict", *arguments]) == cli.EXIT_USER_ERROR
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith("sentiment-rnn predict: error: ")
        return message

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n"))
    assert "no review in standard input" in error_of()
    assert "has no alias 'staging'" in error_of("--alias", "staging", "fine film")

    missing = store / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    assert f"no MLflow store at {missing}" in error_of("fine film")
    assert not missing.exists()


def _mlflow_environment(store: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(MLFLOW.parent), environment.get("PATH", "")])
    environment["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    return environment


@pytest.mark.slow
def test_mlflow_models_predict_gives_the_same_probabilities(store: Path, models) -> None:
    reviews_csv = store / "reviews.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": REVIEWS[:3]}).to_csv(reviews_csv, index=False)
    output = store / "predictions.json"

    subprocess.run(
        [
            str(MLFLOW),
            "models",
            "predict",
            "-m",
            f"models:/{REGISTRY.model_name}@champion",
            "-i",
            str(reviews_csv),
            "-t",
            "csv",
            "-o",
            str(output),
            "--env-manager",
            "local",
        ],
        check=True,
        env=_mlflow_environment(store),
        timeout=240,
        capture_output=True,
    )

    predictions = json.loads(output.read_text())["predictions"]
    expected = trained_path_probabilities(models.good, REVIEWS[:3])
    np.testing.assert_allclose([row["probability"] for row in predictions], expected, atol=1e-6)
    assert [row["label"] for row in predictions] == [1, 0, 1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(store: Path, models) -> None:
    port = _free_port()
    log_file = store / "serve.log"
    with open(log_file, "wb") as server_log:
        server = subprocess.Popen(
            [
                str(MLFLOW),
                "models",
                "serve",
                "-m",
                f"models:/{REGISTRY.model_name}@champion",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--env-manager",
                "local",
                "-w",
                "1",
            ],
            env=_mlflow_environment(store),
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log_file.read_text(errors="replace")[-2000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "server did not start within 180 s"
            time.sleep(1)

        response = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["text"], "data": [[r] for r in REVIEWS[:2]]}},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = trained_path_probabilities(models.good, REVIEWS[:2])
        np.testing.assert_allclose([row["probability"] for row in predictions], expected, atol=1e-6)
        assert [row["label"] for row in predictions] == [1, 0]
    finally:
        # The server runs workers of its own: stop the whole session we started, then wait.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
