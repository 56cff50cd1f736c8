"""How fast the preprocess stage turns the full archive into model input.

Runs ``sentiment_rnn.preprocess.main`` with the repository's ``params.yaml`` on an archive given
by path, in a temporary folder (the archive is linked there, not copied), and reports seconds and
reviews per second. The goal is under 30 s for the 50,000 reviews; because that depends on the
machine, the run also times a plain baseline on the same machine, in the same run: reading and
decoding every review member with ``tarfile`` and nothing else, the floor any preprocessing pays.

    .venv/bin/python benchmarks/preprocess_speed.py [ARCHIVE] [--repeats N]

Exit status 1 if the best run misses the 30 s goal.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz"
GOAL_SECONDS = 30.0


def plain_read(archive: Path) -> tuple[int, float]:
    """Read and decode every review member; return the count and the seconds it took."""
    started = time.perf_counter()
    count = 0
    with tarfile.open(archive, "r:gz") as members:
        for member in members:
            parts = member.name.split("/")
            if len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            if parts[-2] not in ("pos", "neg") or not member.isfile():
                continue
            handle = members.extractfile(member)
            if handle is not None:
                with handle:
                    handle.read().decode("utf-8")
                count += 1
    return count, time.perf_counter() - started


def run_stage(archive: Path) -> tuple[int, float]:
    """Run the preprocess stage in a fresh temporary project; return reviews and seconds."""
    import json

    from sentiment_rnn import paths, preprocess
    from sentiment_rnn.params import load_params

    params = load_params(REPO / "params.yaml")
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="preprocess-speed-") as folder:
        os.chdir(folder)
        try:
            paths.RAW_DIR.mkdir(parents=True)
            paths.archive_path().symlink_to(archive.resolve())
            started = time.perf_counter()
            preprocess.main(params.data, params.preprocess)
            seconds = time.perf_counter() - started
            metrics = json.loads(preprocess.METRICS_FILE.read_text(encoding="utf-8"))
        finally:
            os.chdir(here)
    reviews = sum(split["total"] for split in metrics["reviews"].values())
    return reviews, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (best is kept)")
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        print(f"no archive at {args.archive}; pass its path", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    # One untimed read, so both measurements find the archive in the page cache.
    plain_read(args.archive)
    baseline_runs = [plain_read(args.archive) for _ in range(args.repeats)]
    stage_runs = [run_stage(args.archive) for _ in range(args.repeats)]

    reviews = stage_runs[0][0]
    baseline = min(seconds for _, seconds in baseline_runs)
    stage = min(seconds for _, seconds in stage_runs)
    print(f"archive:           {args.archive} ({args.archive.stat().st_size / 1e6:.1f} MB)")
    print(f"cpu cores:         {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"baseline (tar):    {baseline:6.2f} s for {baseline_runs[0][0]:,} reviews")
    print(
        f"preprocess:        {stage:6.2f} s for {reviews:,} reviews "
        f"({reviews / stage:,.0f} reviews/s); runs: "
        + ", ".join(f"{seconds:.2f}" for _, seconds in stage_runs)
        + (
            f" (median {statistics.median(s for _, s in stage_runs):.2f})"
            if args.repeats > 1
            else ""
        )
    )
    print(f"preprocess / baseline: {stage / baseline:.1f}x")
    # The goal as a ratio too: how many plain reads of the archive the 30 s budget buys here.
    print(
        f"goal: < {GOAL_SECONDS:.0f} s = {GOAL_SECONDS / baseline:.1f}x baseline on this machine; "
        f"{'PASS' if stage < GOAL_SECONDS else 'FAIL'} "
        f"({stage / GOAL_SECONDS:.0%} of the budget)"
    )
    return 0 if stage < GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
