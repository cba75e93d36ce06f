"""Training and evaluation over several processes (torchrun, gloo, real FFCV, tiny data): the
same maths as one process, one run written by rank 0, resumable across world sizes, no hang
when a rank dies, SIGTERM checkpoints and stops."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_dataset, vgg_process
from vggcli.data.synthetic import SyntheticSpec
from vggcli.runs import COMPLETE, resolve, versions

pytestmark = pytest.mark.slow

# 96 training images (6 steps of 16 an epoch), 21 validation images (odd: shards differ).
DATA = SyntheticSpec(classes=3, train_per_class=32, val_per_class=7, seed=3)
NET = shlex.split(
    "--net A --scale 32-48 --epochs 3 --width 0.0625 --crop 32 --batch-size 16 --init kaiming "
    "--input-scale 0.0156 --last-std 0.01 --lr 0.003 --dropout 0 --precision fp32 --workers 1"
)
ENV = {"OMP_NUM_THREADS": "1", "VGG_COLLECTIVE_TIMEOUT": "60"}


def _vgg(root: Path, *args: str) -> subprocess.Popen:
    return vgg_process(*args, runs_root=root, extra_env=ENV, start_new_session=True)


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs root with the dataset and `ref`, net A trained uninterrupted by one process."""
    from vggcli.stages import preprocess

    base = tmp_path_factory.mktemp("distributed")
    source = make_dataset(base / "tiny", DATA)
    storage = preprocess.StorageSettings(max_side=64)
    config = preprocess.PreprocessConfig(source, name="tiny", workers=1, storage=storage)
    preprocess.run(config, base / "runs")
    _finish(_vgg(base / "runs", "train", *NET, "--name", "ref"))
    return base / "runs"


def _state(root: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(resolve(name, root).path / "model.pt", weights_only=True)["state_dict"]


def _steps(root: Path, name: str) -> list[dict]:
    lines = (resolve(name, root).path / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["kind"] == "step"]


def _assert_same_training(root: Path, name: str, reference: str = "ref") -> None:
    """The whole model's relative L2 difference below 1e-5; per step, the same loss. (Per
    tensor is too strict a yardstick: summing gradients in another order moved the
    near-zero first-layer biases by 1e-3 of their own size under augmentation scheme 3,
    while the model moved by 3.7e-6 of its size and every loss agreed to 2e-6.)"""
    ours, ref = _state(root, name), _state(root, reference)
    learnt = [key for key in ref if key not in ("mean", "std")]
    moved = sum(((ours[k].float() - ref[k].float()) ** 2).sum() for k in learnt).sqrt()
    size = sum((ref[k].float() ** 2).sum() for k in learnt).sqrt()
    assert moved / size < 1e-5, (moved / size).item()
    assert all(torch.equal(ours[k], ref[k]) for k in ("mean", "std"))
    losses = [r["loss"] for r in _steps(root, name)]
    ref_losses = [r["loss"] for r in _steps(root, reference)]
    assert len(losses) == len(ref_losses) == 18
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def _executions(root: Path, name: str) -> list[dict]:
    return versions(root / name)[-1].manifest()["executions"]


def _wait_for_steps(root: Path, name: str, steps: int, process: subprocess.Popen) -> None:
    metrics = root / name / "v001" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= steps:
            return
        time.sleep(0.01)
    raise AssertionError(f"{name} never reached step {steps}: {process.communicate()[0]}")


def _workers(launcher: int) -> list[int]:
    """The rank processes torchrun started (children of the launcher process)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cmdline = (stat.parent / "cmdline").read_bytes() if int(fields[1]) == launcher else b""
        if b"vggcli" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_two_processes_make_the_same_updates_as_one(root: Path) -> None:
    """Colour shift and flips on, dropout 0, three epochs (epoch boundaries, validations)."""
    output = _finish(_vgg(root, "train", *NET, "--name", "two", "--nproc", "2"))
    _assert_same_training(root, "two")
    assert output.count("done:") == 1  # rank 0 speaks for both
    assert len(versions(root / "two")) == 1
    (execution,) = _executions(root, "two")
    assert (execution["world_size"], execution["backend"], execution["nodes"]) == (2, "gloo", 1)
    assert "world_size" not in resolve("two", root).manifest()["config"]


def test_evaluation_over_two_processes_gives_exactly_the_same_posteriors(root: Path) -> None:
    args = ["evaluate", "ref", "--mode", "dense+crop", "--multi-scale", "--precision", "fp32"]
    _finish(_vgg(root, *args, "--name", "eval-one"))
    _finish(_vgg(root, *args, "--name", "eval-two", "--nproc", "2"))
    one, two = resolve("eval-one", root), resolve("eval-two", root)
    names = [n for n in one.manifest()["outputs"] if n.endswith(".npy")]
    assert len(names) == 1 + 3 * 2 + 3  # labels, 2 methods x 3 scales, 2 methods + both
    for name in names:
        a, b = np.load(one.path / name), np.load(two.path / name)
        assert a.shape[0] == 21
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert one.results()["errors"] == two.results()["errors"]


def test_a_killed_rank_stops_the_job_and_one_process_resumes_it(root: Path) -> None:
    job = _vgg(root, "train", *NET, "--name", "killed", "--nproc", "2", "--checkpoint-steps", "1")
    _wait_for_steps(root, "killed", 8, job)
    ranks = _workers(job.pid)
    assert len(ranks) == 2
    os.kill(ranks[-1], signal.SIGKILL)
    started = time.monotonic()
    job.communicate(timeout=90)
    assert job.returncode != 0 and time.monotonic() - started < 60  # the collective timeout
    assert versions(root / "killed")[-1].status() != COMPLETE
    _finish(_vgg(root, "train", *NET, "--name", "killed", "--checkpoint-steps", "1"))
    assert len(versions(root / "killed")) == 1  # resumed, not restarted
    _assert_same_training(root, "killed")
    assert [e["world_size"] for e in _executions(root, "killed")] == [2, 1]


def test_fc_only_finetune_over_two_processes_killed_and_resumed_by_one(root: Path) -> None:
    """Frozen convs under DDP, and a resumed fc-only run stays fc-only: killed while two
    processes fine-tune the head and finished by one, it equals an uninterrupted one-process
    fc-only fine-tune, and its convs are still ref's."""
    tune = ["finetune-scale", "ref", "--scale", "40", "--fc-only", "--precision", "fp32"]
    tune += ["--workers", "1", "--checkpoint-steps", "1"]
    _finish(_vgg(root, *tune, "--name", "fc-one"))
    job = _vgg(root, *tune, "--name", "fc-killed", "--nproc", "2")
    _wait_for_steps(root, "fc-killed", 8, job)
    for rank in _workers(job.pid):  # both ranks at once: no collective timeout to wait for
        os.kill(rank, signal.SIGKILL)
    job.communicate(timeout=60)
    assert job.returncode != 0
    _finish(_vgg(root, *tune, "--name", "fc-killed"))
    assert len(versions(root / "fc-killed")) == 1
    assert [e["world_size"] for e in _executions(root, "fc-killed")] == [2, 1]
    assert resolve("fc-killed", root).manifest()["config"]["fc_only"] is True
    _assert_same_training(root, "fc-killed", "fc-one")
    ours, ref = _state(root, "fc-killed"), _state(root, "ref")
    convs = [k for k in ref if k.startswith("features.")]
    assert convs and all(torch.equal(ours[k], ref[k]) for k in convs)
    assert not torch.equal(ours["head.fc6.weight"], ref["head.fc6.weight"])


def test_compiled_training_over_two_processes_killed_and_resumed_equals_eager(root: Path) -> None:
    """What `--compile` (the default on CUDA) must keep: torch.compile of the DDP-wrapped
    model, with gradient accumulation (no_sync steps) as well, killed and resumed by the
    same command, makes the updates of one eager process (compiled kernels round
    differently: 2e-8 of the model apart, within the yardstick)."""
    compiled = [*NET, "--compile", "--micro-batch", "4", "--checkpoint-steps", "1", "--nproc", "2"]
    job = _vgg(root, "train", *compiled, "--name", "compiled")
    _wait_for_steps(root, "compiled", 8, job)
    for rank in _workers(job.pid):
        os.kill(rank, signal.SIGKILL)
    job.communicate(timeout=60)
    assert job.returncode != 0
    _finish(_vgg(root, "train", *compiled, "--name", "compiled"))
    assert len(versions(root / "compiled")) == 1  # resumed, not restarted
    assert resolve("compiled", root).manifest()["config"]["compile"] is True
    assert resolve("ref", root).manifest()["config"]["compile"] is False  # a CPU's default
    assert [e["world_size"] for e in _executions(root, "compiled")] == [2, 2]
    _assert_same_training(root, "compiled")


def test_one_process_killed_resumes_with_two(root: Path) -> None:
    job = _vgg(root, "train", *NET, "--name", "grown", "--checkpoint-steps", "1")
    _wait_for_steps(root, "grown", 8, job)
    os.killpg(job.pid, signal.SIGKILL)
    job.communicate(timeout=30)
    _finish(_vgg(root, "train", *NET, "--name", "grown", "--nproc", "2"))
    assert len(versions(root / "grown")) == 1
    _assert_same_training(root, "grown")
    assert [e["world_size"] for e in _executions(root, "grown")] == [1, 2]


def test_sigterm_writes_a_checkpoint_and_every_rank_exits(root: Path) -> None:
    """As Slurm preempts a job: SIGTERM to the launcher; no step checkpoints otherwise."""
    job = _vgg(root, "train", *NET, "--name", "preempted", "--nproc", "2")
    _wait_for_steps(root, "preempted", 8, job)
    ranks = _workers(job.pid)
    job.send_signal(signal.SIGTERM)
    output, _ = job.communicate(timeout=90)
    assert job.returncode == 75, output  # EX_TEMPFAIL: run again to resume
    for rank in ranks:  # both ranks are gone
        assert not Path(f"/proc/{rank}").exists() or "Z" in Path(f"/proc/{rank}/stat").read_text()
    version = versions(root / "preempted")[-1]
    manifest = version.manifest()
    assert "SIGTERM" in manifest["error"], output
    (checkpoint,) = [n for n in manifest["outputs"] if n.startswith("checkpoint-")]
    position = torch.load(version.path / checkpoint, weights_only=True)["position"]
    assert 8 <= position["step"] < 18  # written when SIGTERM came, not at the end
    _finish(_vgg(root, "train", *NET, "--name", "preempted", "--nproc", "2"))
    assert len(versions(root / "preempted")) == 1
    _assert_same_training(root, "preempted")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_nodes_train_together_and_write_one_run(root: Path) -> None:
    """Two torchrun launchers, one process each, meeting at a c10d rendezvous."""
    launcher = [
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"localhost:{_free_port()}",
        "--rdzv-id",
        "vgg-test",
        "-m",
        "vggcli",
        "train",
        *NET,
        "--name",
        "nodes",
    ]
    env = {**os.environ, **ENV, "VGG_RUNS": str(root)}
    nodes = [
        subprocess.Popen(
            [sys.executable, *launcher],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for node in nodes:
        _finish(node)
    assert [v.status() for v in versions(root / "nodes")] == [COMPLETE]
    (execution,) = _executions(root, "nodes")
    assert (execution["world_size"], execution["nodes"]) == (2, 2)
    _assert_same_training(root, "nodes")
