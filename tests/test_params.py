"""Loading params.yaml: the repository's file loads, and every mistake is one clear line."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentiment_rnn import cli
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = REPO / "params.yaml"


@pytest.fixture(scope="module")
def repo_raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def test_repository_params_load() -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    # The textbook setting.
    assert params.preprocess.num_words == 500
    assert params.preprocess.maxlen == 200
    assert params.preprocess.validation_fraction == 0.2
    assert params.train.optimizer == "rmsprop"
    assert params.train.batch_size == 128
    assert params.train.epochs == 10
    assert params.variants == ["lstm", "rnn"]
    assert params.data.extra == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets the dotted ``path`` to ``value``."""

    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            raw = raw[part]
        raw[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            raw = raw[part]
        del raw[last]

    return change


# Each bad file and the pieces its one-line message must contain: the key, the value and
# what is allowed.
CASES = {
    "typo": (
        _set("preprocess.maxlne", 200),
        ["unknown key 'preprocess.maxlne'", "allowed here:", "maxlen", "typo"],
    ),
    "typo-top-level": (_set("trian", {}), ["unknown key 'trian'", "train, tune"]),
    "typo-nested": (
        _set("tune.space.learning_rate.lo", 0.1),
        ["unknown key 'tune.space.learning_rate.lo'", "allowed here: low, high"],
    ),
    "missing": (_delete("train.epochs"), ["missing key 'train.epochs'", "add it"]),
    "missing-section": (_delete("data"), ["missing key 'data'"]),
    "negative-threads": (
        _set("train.threads", -1),
        ["train.threads = -1", "greater than or equal to 0"],
    ),
    "negative-size": (
        _set("train.batch_size", -8),
        ["train.batch_size = -8", "greater than 0"],
    ),
    "zero-maxlen": (_set("preprocess.maxlen", 0), ["preprocess.maxlen = 0", "greater than 0"]),
    "fraction-above": (
        _set("preprocess.validation_fraction", 1.5),
        ["preprocess.validation_fraction = 1.5", "less than 1"],
    ),
    "fraction-zero": (
        _set("preprocess.validation_fraction", 0),
        ["preprocess.validation_fraction = 0", "greater than 0"],
    ),
    "unknown-variant": (
        _set("variants", ["lstm", "gru"]),
        ["variants[1] = 'gru'", "'lstm' or 'rnn'"],
    ),
    "bad-sha256": (
        _set("data.sha256", "abc123"),
        ["data.sha256 = 'abc123'", "64 hexadecimal digits"],
    ),
    "extra-not-list": (_set("data.extra", "new.csv"), ["data.extra = 'new.csv'", "list"]),
    "unknown-optimizer": (
        _set("train.optimizer", "sgd"),
        ["train.optimizer = 'sgd'", "'rmsprop' or 'adam'"],
    ),
    "duplicate-seeds": (_set("train.seeds", [1, 1]), ["train.seeds", "distinct"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_one_clear_line(case: str, repo_raw: dict[str, Any], tmp_path: Path) -> None:
    change, expected = CASES[case]
    raw = copy.deepcopy(repo_raw)
    change(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    with pytest.raises(UserError) as raised:
        load_params(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for piece in expected:
        assert piece in message, f"{piece!r} not in {message!r}"


def test_exponent_without_dot_is_a_number(repo_raw: dict[str, Any], tmp_path: Path) -> None:
    # PyYAML reads `1e-3` (no dot) as a string; people write it, so it must still load.
    text = yaml.safe_dump(repo_raw).replace("learning_rate: 0.001", "learning_rate: 1e-3")
    assert "learning_rate: 1e-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_params(path).train.learning_rate == pytest.approx(0.001)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such parameters file"):
        load_params(tmp_path / "absent.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  url: [unclosed\n  sha256: x\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        load_params(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(UserError, match="expected a mapping of sections, got list"):
        load_params(path)


def _write_bad_params(repo_raw: dict[str, Any], folder: Path) -> Path:
    raw = copy.deepcopy(repo_raw)
    raw["preprocess"]["validation_fraction"] = 2
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_cli_prints_one_line_and_exits_2(
    repo_raw: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_bad_params(repo_raw, tmp_path)
    assert cli.main(["--params", str(path), "preprocess"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"sentiment-rnn preprocess: error: {path}: preprocess.validation_fraction = 2: "
        "Input should be less than 1\n"
    )


def test_console_script_exits_2_without_traceback(repo_raw: dict[str, Any], tmp_path: Path) -> None:
    path = _write_bad_params(repo_raw, tmp_path)
    script = Path(sys.executable).with_name("sentiment-rnn")
    result = subprocess.run(
        [str(script), "--params", str(path), "preprocess"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "preprocess.validation_fraction = 2" in lines[0]
