"""Shared fixtures: tiny generated datasets and a CLI runner bound to a temporary runs root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

# Wide, fixed console lines wherever the tests run (xdist workers have no terminal to ask):
# rich reads COLUMNS when vggcli.progress makes its console, so before any vggcli import
os.environ["COLUMNS"] = "200"
# `just test` runs one pytest-xdist worker per core: each worker's torch (and the commands it
# starts) takes its share of the cores, never all of them (oversubscribed torch crawls).
# Set before torch is imported, which reads it once.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

from vggcli.cli import app
from vggcli.data.synthetic import SyntheticSpec, generate

TINY = SyntheticSpec(classes=4, train_per_class=6, val_per_class=3, seed=1)


def make_dataset(folder: Path, spec: SyntheticSpec = TINY) -> Path:
    generate(folder, spec)
    return folder


def edit_manifest(version: Path, edit: Callable[[dict], None]) -> None:
    """Change a version's manifest as a process of ours would (killed mid-run, or written by
    an older version of the tool), re-sealed: a hand edit is caught as damage."""
    from vggcli.runs import sealed

    path = version / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(sealed(manifest)))


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    """A fresh 4-class ILSVRC-layout folder (flat val + LOC_val_solution.csv) per test."""
    return make_dataset(tmp_path / "imagenet")


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def vgg(runs_root: Path) -> Callable[..., Result]:
    """Invoke the real CLI in-process with this test's runs root."""
    runner = CliRunner()
    # --no-verify sets VGG_NO_VERIFY in this process; listing it here restores it after
    env = {"VGG_RUNS": str(runs_root), "COLUMNS": "200", "VGG_NO_VERIFY": None}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, [*args], env=env)

    return invoke


@pytest.fixture(scope="session")
def dataset_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs root holding one preprocessed dataset run, `tiny` (10 classes, 20 + 5 images
    each), made once per session; copy it with `train_root` before writing to it."""
    from vggcli.stages import preprocess

    base = tmp_path_factory.mktemp("dataset")
    source = make_dataset(base / "tiny", SyntheticSpec(10, 20, 5, seed=2))
    storage = preprocess.StorageSettings(max_side=128)
    config = preprocess.PreprocessConfig(source, name="tiny", workers=2, storage=storage)
    preprocess.run(config, base / "runs")
    return base / "runs"


@pytest.fixture
def train_root(dataset_runs: Path, runs_root: Path) -> Path:
    """This test's own runs root, starting with the `tiny` dataset run."""
    import shutil

    shutil.copytree(dataset_runs, runs_root)
    return runs_root


def vgg_process(
    *args: str, runs_root: Path, extra_env: dict[str, str] | None = None, **popen
) -> subprocess.Popen:
    """The real CLI in its own process (to kill it, or to limit its file sizes)."""
    env = {**os.environ, **(extra_env or {}), "VGG_RUNS": str(runs_root)}
    return subprocess.Popen(
        [sys.executable, "-m", "vggcli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def metrics_rows(version_path: Path) -> list[dict]:
    """The rows of a training run's metrics.jsonl."""
    lines = (version_path / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# `just test` (pytest-xdist, --dist loadfile --no-loadscope-reorder) hands each worker whole
# files in collection order. test_learning.py takes a minute or more on one worker with only
# two tests; xdist's own order (most tests first) handed it out last, and the other core idled
# until it ended. So it goes first (with test_wheelhouse.py, a minute and a half for three
# tests: the other worker takes it; test_learning_photos.py, as long, next), then the files
# with the most tests.
LONGEST_FILES = ("test_learning.py", "test_wheelhouse.py", "test_learning_photos.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_in: dict[str, int] = {}
    for item in items:
        tests_in[item.path.name] = tests_in.get(item.path.name, 0) + 1

    def rank(item: pytest.Item) -> tuple[bool, int]:
        return item.path.name not in LONGEST_FILES, -tests_in[item.path.name]

    items.sort(key=rank)
