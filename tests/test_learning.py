"""Learning really happens on the demo dataset, and init-from-A helps as the paper says.

These train for real (a minute or two each on 2 CPU cores) with the smoke recipe documented
in docs/train.md: width 1/4, 64 px crops, batch 16, He init with the input scaled to unit
variance, lr 3e-3, no dropout.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.conftest import make_dataset, metrics_rows
from vggcli.data.synthetic import SyntheticSpec
from vggcli.runs import resolve

SMOKE = shlex.split(
    "--width 0.25 --crop 64 --scale 64 --batch-size 16 --init kaiming --input-scale 0.0156 "
    "--lr 0.003 --dropout 0 --patience 5"
)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset (10 classes, 100 + 20 images each), preprocessed once."""
    from vggcli.stages import preprocess

    base = tmp_path_factory.mktemp("demo")
    source = make_dataset(base / "tiny-imagenet", SyntheticSpec())
    preprocess.run(preprocess.PreprocessConfig(source, workers=2), base / "runs")
    return base / "runs"


def _val_errors(version_path: Path) -> list[float]:
    return [r["val_top1_err"] for r in metrics_rows(version_path) if r["kind"] == "epoch"]


@pytest.mark.slow
def test_net_a_learns_the_demo_dataset(vgg, demo_runs: Path, runs_root: Path) -> None:
    import shutil

    shutil.copytree(demo_runs, runs_root)
    result = vgg("train", "--net", "A", "--epochs", "35", *SMOKE)
    assert result.exit_code == 0, result.output
    errors = _val_errors(resolve("A", runs_root).path)
    assert errors[0] > 0.6  # it starts at chance (90% error for 10 classes)...
    assert min(errors[-5:]) < 0.2  # ...and ends under 20% top-1 error
    # bf16 evaluation (the default where the CPU has it) agrees with fp32 within one image
    top1 = {}
    for precision in ("bf16", "fp32"):
        name = f"A-{precision}"
        assert vgg("evaluate", "A", "--precision", precision, "--name", name).exit_code == 0
        (row,) = resolve(name, runs_root).results()["errors"]
        top1[precision] = row["top1_err"]
    assert abs(top1["bf16"] - top1["fp32"]) <= 1 / 200 + 1e-9, top1


@pytest.mark.slow
def test_init_from_a_beats_random_init_in_the_same_budget(vgg, demo_runs, runs_root) -> None:
    import shutil

    shutil.copytree(demo_runs, runs_root)
    assert vgg("train", "--net", "A", "--epochs", "35", *SMOKE).exit_code == 0  # the demo's A
    budget = ["--epochs", "6", *SMOKE]
    assert vgg("train", "--net", "D", "--name", "D-random", *budget).exit_code == 0
    result = vgg("train", "--net", "D", "--init-from", str(runs_root / "A"), *budget)
    assert result.exit_code == 0, result.output
    from_a = _val_errors(resolve("D", runs_root).path)
    random = _val_errors(resolve("D-random", runs_root).path)
    assert min(from_a) < min(random) - 0.15, (from_a, random)
