"""`dvc repro` and `dvc exp run --queue` in a throw-away repository, with the real executables."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import build_archive

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path("data/raw/aclImdb_v1.tar.gz")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Project:
    """A git + DVC repository with this project's pipeline, run through subprocesses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            # The dvc and sentiment-rnn of this very environment, whatever the shell has.
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@sentiment-rnn.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@sentiment-rnn.invalid",
        }

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def repro(self, *targets: str, check: bool = True) -> str:
        result = self.run("dvc", "repro", *targets, check=check)
        return result.stdout + result.stderr

    def edit_params(self, change: Callable[[dict], None]) -> None:
        path = self.root / "params.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        change(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """The pipeline files, and params pointing at a small archive outside the repository."""
    archive = build_archive(tmp_path / "source" / "aclImdb_v1.tar.gz", per_class=20)
    root = tmp_path / "repo"
    (root / "src" / "sentiment_rnn").mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    # dvc.yaml lists the stage's source files as dependencies: they must exist here too.
    for source in (REPO / "src" / "sentiment_rnn").glob("*.py"):
        shutil.copy(source, root / "src" / "sentiment_rnn" / source.name)

    project = Project(root)
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["data"].update(url=str(archive), sha256=sha256(archive))
    raw["preprocess"].update(num_words=50, maxlen=40)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    project.run("git", "init", "--quiet")
    project.run("dvc", "init", "--quiet")
    project.run("dvc", "config", "core.analytics", "false")
    return project


def test_repro_preprocess_then_nothing_then_only_preprocess(project: Project) -> None:
    root = project.root
    output = project.repro("preprocess")
    assert "Running stage 'fetch'" in output
    assert "Running stage 'preprocess'" in output
    assert sha256(root / ARCHIVE) == sha256(root.parent / "source" / "aclImdb_v1.tar.gz")
    for split, size in (("train", 32), ("validation", 8), ("test", 40)):
        with np.load(root / "data" / "processed" / f"{split}.npz") as arrays:
            assert arrays["x"].shape == (size, 40)
    for name in ("vocabulary.json", "reviews.parquet"):
        assert (root / "data" / "processed" / name).is_file()
    metrics = json.loads((root / "metrics" / "data.json").read_text(encoding="utf-8"))
    assert metrics["reviews"]["train"] == {"pos": 16, "neg": 16, "total": 32}
    shown = project.run("dvc", "metrics", "show").stdout
    assert "reviews.train.total" in shown or "train.total" in shown
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    assert set(lock["stages"]) == {"fetch", "preprocess"}

    again = project.repro("preprocess")
    assert "Running stage" not in again
    assert "didn't change" in again or "up to date" in again

    project.edit_params(lambda raw: raw["preprocess"].update(maxlen=25))
    changed = project.repro("preprocess")
    assert "Running stage 'preprocess'" in changed
    assert "Running stage 'fetch'" not in changed
    with np.load(root / "data" / "processed" / "train.npz") as arrays:
        assert arrays["x"].shape == (32, 25)


def test_wrong_sha256_fails_and_leaves_no_archive(project: Project) -> None:
    actual = sha256(project.root.parent / "source" / "aclImdb_v1.tar.gz")
    wrong = "0" * 64
    project.edit_params(lambda raw: raw["data"].update(sha256=wrong))

    result = project.run("dvc", "repro", "preprocess", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert wrong in output
    assert actual in output
    assert "Running stage 'preprocess'" not in output
    assert not list((project.root / "data" / "raw").glob("*.tar.gz"))
    assert not (project.root / "data" / "processed").exists()


def tiny_training(raw: dict) -> None:
    """Shrink tuning and training to seconds; the sizes stay inside the search space."""
    raw["train"].update(embedding_dim=4, units=4, batch_size=16, epochs=1, seeds=[1], patience=1)
    raw["tune"].update(n_trials=2, epochs=1, timeout_s=120, train_fraction=0.5)
    raw["tune"]["space"].update(units=[4], embedding_dim=[4], batch_size=[16, 32])


def train_parent_runs(root: Path) -> list[dict[str, str]]:
    """Tags and params of the ``train-<variant>`` parent runs in the repository's own store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sentiment-rnn")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.stage = 'train'", max_results=100
    )
    return [
        {**run.data.tags, **{f"param.{k}": v for k, v in run.data.params.items()}}
        for run in runs
        if run.data.tags.get("mlflow.runName", "").startswith("train-")
        and "mlflow.parentRunId" not in run.data.tags
    ]


def test_whole_pipeline_then_a_queued_experiment_logs_to_the_same_store(
    project: Project,
) -> None:
    root = project.root
    project.edit_params(tiny_training)
    # The default store: no tracking URI from the test session may leak into the stages.
    project.env.pop("MLFLOW_TRACKING_URI", None)
    project.env.pop("SENTIMENT_RNN_STORE_ROOT", None)

    output = project.repro()
    for stage in ("fetch", "preprocess", "tune@lstm", "tune@rnn", "train@lstm", "train@rnn"):
        assert f"Running stage '{stage}'" in output
    assert "Running stage 'compare'" in output
    assert (root / "reports" / "comparison.md").is_file()
    assert (root / "mlflow.db").is_file()
    first = train_parent_runs(root)
    assert sorted(run["variant"] for run in first) == ["lstm", "rnn"]
    assert {run["param.epochs"] for run in first} == {"1"}

    # Only the train stages (and compare, which reads them) depend on train.epochs.
    project.edit_params(lambda raw: raw["train"].update(epochs=2))
    changed = project.repro()
    assert "Running stage 'train@lstm'" in changed
    assert "Running stage 'train@rnn'" in changed
    for stage in ("fetch", "preprocess", "tune@lstm", "tune@rnn"):
        assert f"Running stage '{stage}'" not in changed
    project.edit_params(lambda raw: raw["train"].update(epochs=1))
    project.repro()

    # A queued experiment runs in a copy under .dvc/tmp/exps; its runs must land here.
    project.run("git", "add", "-A")
    project.run("git", "commit", "--quiet", "-m", "tiny pipeline")
    project.run("dvc", "exp", "run", "--queue", "-S", "train.epochs=3", "--name", "three")
    project.run("dvc", "queue", "start")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = project.run("dvc", "queue", "status").stdout
        if "three" in status and not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(3)
    else:
        pytest.fail(f"the queued experiment did not finish:\n{status}")
    if "Success" not in status:
        logs = project.run("dvc", "queue", "logs", "three", check=False)
        pytest.fail(f"the queued experiment failed:\n{status}\n{logs.stdout}{logs.stderr}")

    queued = [run for run in train_parent_runs(root) if run.get("dvc_exp_name") == "three"]
    assert sorted(run["variant"] for run in queued) == ["lstm", "rnn"]
    assert {run["param.epochs"] for run in queued} == {"3"}
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
