"""`dvc repro` of fetch and preprocess in a throw-away repository, with the real executables."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
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
