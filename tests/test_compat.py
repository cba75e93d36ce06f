"""Runs written by older code (tests/fixtures/runs-v0: no `kind` in the manifests, the mean
beside the weights instead of inside the model) still resolve, evaluate, fuse, initialise
deeper nets and report, and are never rewritten."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vggcli.artifacts import (
    DatasetRun,
    EvaluationRun,
    FusionRun,
    Kind,
    ModelRun,
    kind_of,
    resolve_as,
)
from vggcli.config import SCHEME
from vggcli.files import sha256_file
from vggcli.runs import resolve

FIXTURE = Path(__file__).parent / "fixtures" / "runs-v0"


@pytest.fixture
def old_root(tmp_path: Path) -> Path:
    """A copy of the old runs root with its betons unpacked (byte-identical to the
    recorded sha256)."""
    root = tmp_path / "runs"
    shutil.copytree(FIXTURE, root)
    for packed in root.rglob("*.beton.gz"):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    return root


def _hashes_hold(version_path: Path) -> bool:
    outputs = json.loads((version_path / "manifest.json").read_text())["outputs"]
    return all(sha256_file(version_path / n) == o["sha256"] for n, o in outputs.items())


def test_old_runs_resolve_with_their_kinds_inferred(old_root: Path) -> None:
    expected = {
        "tiny": Kind.DATASET,
        "A": Kind.MODEL,
        "B": Kind.MODEL,
        "A-eval": Kind.EVALUATION,
        "fuse-A+B": Kind.FUSION,
    }
    for name, kind in expected.items():
        version = resolve(name, old_root)
        assert "kind" not in version.manifest() and kind_of(version) == kind
        assert _hashes_hold(version.path)
    assert resolve_as("tiny", old_root, DatasetRun).num_classes() == 4
    assert resolve_as("A", old_root, ModelRun).train_scales() == (40, 40)
    assert resolve_as("A-eval", old_root, EvaluationRun).scales() == (35, 40, 45)
    assert resolve_as("fuse-A+B", old_root, FusionRun).members() == ["A/v001", "B/v001"]


def test_old_model_evaluates_to_the_posteriors_old_code_stored(vgg, old_root: Path) -> None:
    weights = old_root / "A" / "v001" / "model.pt"
    before = sha256_file(weights)
    args = ["--mode", "dense", "--multi-scale", "--precision", "fp32", "--name", "A-again"]
    result = vgg("evaluate", "A", *args)
    assert result.exit_code == 0, result.output
    again = resolve_as("A-again", old_root, EvaluationRun)
    old = resolve_as("A-eval", old_root, EvaluationRun)
    assert again.manifest()["kind"] == "evaluation"
    for scale in (None, 35, 40, 45):
        np.testing.assert_allclose(
            np.load(again.posteriors("dense", scale)).astype(np.float32),
            np.load(old.posteriors("dense", scale)).astype(np.float32),
            atol=2e-3,
        )
    assert sha256_file(weights) == before  # converted in memory, never rewritten


def test_old_evaluations_fuse_without_torch(old_root: Path) -> None:
    code = (
        "import sys\n"
        "from vggcli.cli import app\n"
        "try:\n"
        "    app(['fuse', 'A-eval', 'B-eval', '--name', 'fused-again'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('torch' in sys.modules, 'ffcv' in sys.modules)\n"
    )
    env = {**os.environ, "VGG_RUNS": str(old_root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stdout + out.stderr
    fused = resolve_as("fused-again", old_root, FusionRun)
    old = resolve_as("fuse-A+B", old_root, FusionRun)
    stored = np.load(fused.file("dense.npy"))  # float32 now; the old code stored float16
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored.astype(np.float16), np.load(old.file("dense.npy")))
    assert fused.errors() == old.errors()


def test_old_net_a_initialises_a_deeper_net_and_the_report_reads_old_runs(
    vgg, old_root: Path
) -> None:
    net = ["--width", "0.03125", "--crop", "32", "--scale", "40", "--batch-size", "8"]
    result = vgg("train", "--net", "B", *net, "--epochs", "1", "--init-from", "A", "--name", "B2")
    assert result.exit_code == 0, result.output
    assert resolve("B2", old_root).manifest()["config"]["init_from"] == "A/v001"
    result = vgg("report")
    assert result.exit_code == 0, result.output
    text = (resolve("report", old_root).path / "report.md").read_text()
    assert "| A | 40 | 40 |" in text  # Table 3 row of the old evaluation, found by label


def test_an_interrupted_old_run_resumes_with_its_own_augmentation_scheme(
    vgg, old_root: Path
) -> None:
    """A version started before per-image augmentation keys (no `augmentation` in its
    config) and interrupted: re-running its command resumes it, with scheme 1."""
    manifest_path = old_root / "A" / "v001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "running"  # killed: nobody holds its lock
    manifest_path.write_text(json.dumps(manifest))
    net = ["--width", "0.03125", "--crop", "32", "--scale", "40", "--batch-size", "8"]
    result = vgg("train", "--net", "A", *net, "--epochs", "1", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "(resuming)" in result.output
    resumed = resolve("A", old_root).manifest()
    assert resumed["version"] == "v001" and resumed["attempts"] == 2
    assert "augmentation" not in resumed["config"]
    args = ["--epochs", "1", "--precision", "fp32", "--name", "A2"]
    result = vgg("train", "--net", "A", *net, *args)
    assert result.exit_code == 0, result.output
    assert resolve("A2", old_root).manifest()["config"]["augmentation"] == SCHEME
