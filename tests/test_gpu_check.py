"""`just gpu-check`'s bookkeeping: a failed step is named in the reports and the exit code,
the steps after it that need it are not run, a step this machine cannot run is said, not
failed. (The steps themselves run end to end on the CPU in tests/test_wheelhouse.py.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look themselves up there
_spec.loader.exec_module(gpu_check)


def _failing(check) -> dict:
    raise gpu_check.StepFailed("`vgg train` exited 1: error: training diverged")


def _missing(check) -> dict:
    raise gpu_check.StepSkipped("onnxruntime is not installed")


def _broken(check) -> dict:
    return {}["no such figure"]  # a bug, not a failed command


def test_failed_steps_are_named_and_what_needs_them_is_not_run(tmp_path: Path) -> None:
    check = gpu_check.Check(tmp_path, "cpu", gpu_check.CPU, [])
    ran = []
    plan = [
        ("data", lambda c: ran.append("data") or {"images": 26}, ()),
        ("train", _failing, ("data",)),
        ("evaluate", lambda c: ran.append("evaluate") or {}, ("train",)),
        ("export", _missing, ()),
        ("bench", _broken, ()),
    ]
    assert gpu_check.run_steps(check, plan) == ["train", "evaluate", "bench"]
    assert ran == ["data"]
    steps = json.loads((tmp_path / "gpu-check.json").read_text())["steps"]
    assert [s["result"] for s in steps] == ["ok", "failed", "failed", "skipped", "failed"]
    assert steps[0]["images"] == 26 and steps[2]["error"] == "not run: needs train"
    assert steps[4]["error"].startswith("KeyError")
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| train | **failed**: `vgg train` exited 1: error: training diverged |" in table
    assert "| export | skipped: onnxruntime is not installed |" in table


def test_an_existing_output_folder_is_never_written_over(tmp_path: Path, capsys) -> None:
    (tmp_path / "kept").write_text("x")
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


@pytest.mark.skipif(bool(gpu_check._gpus()), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_says_so(tmp_path: Path, capsys) -> None:
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    assert "--device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
