"""Learning really happens on the demo dataset, and init-from-A helps as the paper says.

These train for real (a minute or two on 2 CPU cores) with the smoke recipe documented in
docs/train.md: width 1/4, 64 px crops, batch 16, He init with the input scaled to unit
variance, lr 3e-3 divided on validation plateaus, no dropout; deeper nets start as A
(all of A's layers, the ones A lacks as identities). tests/test_learning_photos.py runs the
same checks on real photographs.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_dataset, metrics_rows
from vggcli.data.synthetic import SyntheticSpec
from vggcli.runs import resolve

SMOKE = shlex.split(  # pipelines/smoke.toml's `net`, at S = 64 to be quick
    "--width 0.25 --crop 64 --scale 64 --batch-size 16 --init kaiming --input-scale 0.0156 "
    "--dropout 0 --plateau-stop --final-drop 4"
)
SCRATCH = shlex.split("--lr 0.003 --patience 5 --epochs 20")  # A: the demo's recipe and cap
# D: the demo's lr and patience for 6 epochs (the final drop: the last 4 at lr / 10)
DEEPER = shlex.split("--lr 0.001 --patience 3 --epochs 6")
A_FINAL = 0.45  # A's last validation error must be below this (chance: 90%)
D_MARGIN = 0.05


def train_a(base: Path, spec: SyntheticSpec) -> Path:
    """A dataset drawn from `spec`, preprocessed, and the demo's net A trained on it with
    the smoke recipe: a runs root to copy (once per module, a minute)."""
    from typer.testing import CliRunner

    from vggcli.cli import app
    from vggcli.stages import preprocess

    source = make_dataset(base / "data", spec)
    preprocess.run(preprocess.PreprocessConfig(source, workers=2), base / "runs")
    args = ["train", "--net", "A", *SMOKE, *SCRATCH, "--runs-root", str(base / "runs")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return base / "runs"


def val_errors(version_path: Path) -> list[float]:
    return [r["val_top1_err"] for r in metrics_rows(version_path) if r["kind"] == "epoch"]


def check_a_learns(trained: Path, runs_root: Path, final: float) -> list[float]:
    """A's validation errors by epoch, checked: it ends well below chance (90% for 10
    classes), at least 20 points below its first epoch."""
    shutil.copytree(trained, runs_root)
    errors = val_errors(resolve("A", runs_root).path)
    assert errors[-1] < final and errors[0] - errors[-1] > 0.2, errors
    return errors


def check_d_from_a_beats_random_init(vgg, trained: Path, runs_root: Path) -> None:
    """The smoke recipe's D starts as A (net2deeper). Within 6 epochs it is far ahead of D
    from random init with the same recipe, and no worse than A was after its whole budget."""
    shutil.copytree(trained, runs_root)
    budget = [*SMOKE, *DEEPER]
    assert vgg("train", "--net", "D", "--name", "D-random", *budget).exit_code == 0
    from_a = ["--init-from", str(runs_root / "A"), "--inserted-init", "net2deeper"]
    result = vgg("train", "--net", "D", *from_a, *budget)
    assert result.exit_code == 0, result.output
    deeper = val_errors(resolve("D", runs_root).path)
    random = val_errors(resolve("D-random", runs_root).path)
    assert deeper[-1] < min(random) - 0.15, (deeper, random)
    assert deeper[-1] <= val_errors(resolve("A", runs_root).path)[-1] + D_MARGIN


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_a(tmp_path_factory.mktemp("demo"), SyntheticSpec())


@pytest.mark.slow
def test_net_a_learns_the_demo_dataset(vgg, demo_runs: Path, runs_root: Path) -> None:
    errors = check_a_learns(demo_runs, runs_root, A_FINAL)
    assert errors[0] > 0.6  # on the shapes it starts at chance
    # bf16 evaluation (the default where the CPU has it) agrees with fp32 within one image
    top1 = {}
    for precision in ("bf16", "fp32"):
        name = f"A-{precision}"
        assert vgg("evaluate", "A", "--precision", precision, "--name", name).exit_code == 0
        (row,) = resolve(name, runs_root).results()["errors"]
        top1[precision] = row["top1_err"]
    assert abs(top1["bf16"] - top1["fp32"]) <= 1 / 200 + 1e-9, top1


@pytest.mark.slow
def test_d_from_a_beats_random_init_in_the_same_budget(vgg, demo_runs, runs_root) -> None:
    check_d_from_a_beats_random_init(vgg, demo_runs, runs_root)
