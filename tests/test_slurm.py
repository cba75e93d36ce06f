"""Pipelines on a real one-node Slurm (munged, slurmctld, slurmd started and stopped by these
tests): the order of a diamond graph, a failing step's dependants never starting, resubmission
submitting only what is missing, preemption resuming to the same weights, cancel."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests import slurm_cluster
from tests.conftest import make_dataset
from tests.test_train import TINY
from vggcli.data.synthetic import SyntheticSpec
from vggcli.errors import VggError, WorkFailed
from vggcli.pipeline import plan, slurm
from vggcli.runs import RUNNING, resolve, versions

pytestmark = pytest.mark.skipif(
    not slurm_cluster.available(), reason="Slurm and munge are not installed (`just setup`)"
)
NET = " ".join(TINY)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One cluster for the module; SLURM_CONF points every client (and submitit) at it."""
    folder = tmp_path_factory.mktemp("slurm")
    with slurm_cluster.one_node_cluster(folder) as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("src") / "tiny", SyntheticSpec(10, 20, 5, seed=2))


def _pipeline(folder: Path, body: str, overrides: tuple = ()) -> plan.Pipeline:
    path = folder / "p.toml"
    path.write_text(f'[pipeline]\nruns_root = "{folder / "runs"}"\n' + textwrap.dedent(body))
    return plan.load(path, overrides=overrides)


def _wait_until_idle(pipeline: plan.Pipeline, timeout: float = 240) -> dict[str, str]:
    """Poll until none of the pipeline's jobs is queued or running; step -> Slurm state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = slurm.step_table(pipeline)
        if not any(slurm.active(state) for *_, state in rows if state):
            return {name: state for name, _, _, state in rows}
        time.sleep(0.5)
    raise AssertionError(f"jobs still running after {timeout} s: {rows}")


# the smallest pipeline with a dependency: the data, then net A trained on it
DATA_THEN_A = f"""
[[step]]
name = "data"
run = "preprocess {{source}} --max-side 64"
[[step]]
name = "A"
run = "train --net A --scale 40 --epochs 1 --data {{{{data}}}} {NET}"
"""

RESOURCES_AND_VARS = '\n[resources]\ntime = 10\n[vars]\nhow = "--scales 40 --mode no-such-mode"'
DIAMOND = RESOURCES_AND_VARS + DATA_THEN_A + f"""[[step]]
name = "A2"
run = "train --net A --scale 48 --epochs 1 --data {{{{data}}}} {NET}"
[[step]]
name = "dense"
run = "evaluate {{{{A}}}} --mode dense"
[[step]]
name = "dense2"
run = "evaluate {{{{A2}}}} --mode dense"
[[step]]
name = "fused"
run = "fuse {{{{dense}}}} {{{{dense2}}}}"
[[step]]
name = "broken"
run = "{{broken}}"
[[step]]
name = "after-broken"
run = "fuse {{{{broken}}}} {{{{dense2}}}}"
"""


def test_diamond_runs_in_order_failure_stops_dependants_resubmit_runs_what_is_missing(
    cluster: None, source: Path, tmp_path: Path
) -> None:
    body = DIAMOND.format(source=source, broken="evaluate {A} {how}")  # fails: no such mode
    pipeline = _pipeline(tmp_path, body)
    jobs = slurm.submit(pipeline, report=lambda _: None)
    assert set(jobs) == {s.name for s in pipeline.steps}
    again = slurm.submit(pipeline, report=lambda _: None)  # while queued: nothing twice
    assert again == jobs

    states = _wait_until_idle(pipeline)
    root = tmp_path / "runs"
    fine = ("data", "A", "A2", "dense", "dense2", "fused")
    assert {n: states[n] for n in fine} == dict.fromkeys(fine, "COMPLETED")
    assert states["broken"] == "FAILED" and states["after-broken"] == "CANCELLED"
    assert not (root / "after-broken").exists()  # never started
    # each step started after its inputs were complete: it names their finished versions
    fused = resolve("fused", root).manifest()
    assert sorted(p["run"] for p in fused["parents"]) == ["dense", "dense2"]
    assert _started(root, "dense") >= _finished(root, "A") >= _finished(root, "data")
    assert _started(root, "dense2") >= _finished(root, "A2") >= _finished(root, "data")
    assert _started(root, "fused") >= max(_finished(root, "dense"), _finished(root, "dense2"))
    executions = resolve("A", root).manifest()["executions"]
    assert executions[0]["slurm_job"] == jobs["A"] and executions[0]["slurm_requeues"] == 0

    # the broken step fixed by `--set`: its job must run the command as set, not the file's
    fixed = _pipeline(tmp_path, body, overrides=(("how", "--scales 48"),))
    said: list[str] = []
    resubmitted = slurm.submit(fixed, report=said.append)
    assert set(resubmitted) == {"broken", "after-broken"}  # the rest is done
    assert sum(line.startswith("[dim]skip") for line in said) == 6
    assert resubmitted["after-broken"] not in jobs.values()
    states = _wait_until_idle(fixed)
    assert states["broken"] == states["after-broken"] == "COMPLETED"
    assert all(len(versions(root / s.name)) == 1 for s in fixed.steps)


def _started(root: Path, name: str) -> float:
    """When the step's run was opened (recorded to the second: rounded up here)."""
    return dt.datetime.fromisoformat(resolve(name, root).manifest()["started"]).timestamp() + 1


def _finished(root: Path, name: str) -> float:
    """When the step's run was completed: the manifest's last write."""
    return (resolve(name, root).path / "manifest.json").stat().st_mtime


def test_preempted_training_requeues_and_ends_with_the_uninterrupted_weights(
    cluster: None, source: Path, tmp_path: Path
) -> None:
    """SIGUSR2 (Slurm's warning before the time limit) then `scontrol requeue` (an operator
    or a preempting job): each time the step checkpoints, exits 75, the job requeues and the
    next start resumes; `ref`, never interrupted, trains the same net beside it."""
    train = f"train --net A --scale 40 --epochs 3 --checkpoint-steps 1 --data {{data}} {NET}"
    pipeline = _pipeline(tmp_path, f"""
        [resources]
        time = 10
        requeues = 2
        [[step]]
        name = "data"
        run = "preprocess {source} --max-side 64"
        [[step]]
        name = "A"
        run = "{train}"
        [[step]]
        name = "ref"
        run = "{train}"
    """)
    jobs = slurm.submit(pipeline, report=lambda _: None)
    root = tmp_path / "runs"
    for preempt in (["scancel", "--signal=USR2", jobs["A"]], ["scontrol", "requeue", jobs["A"]]):
        steps = _steps_done(root) + 4
        _wait_for(lambda: _steps_done(root) >= steps, "training steps")  # noqa: B023
        subprocess.run(preempt, check=True)
        _wait_for(lambda: slurm.job_states().get(jobs["A"]) == "PENDING", "the requeue")
        # a requeued job waits two minutes before it may start again; no need in a test once
        # the old start is over (its version no longer running: failed, which the next start
        # resumes; none of its processes left) and a new second has begun: slurmd refuses a
        # start whose credential was made in the second it revoked the old one's (it keeps
        # whole seconds), and the job then fails ("Killing non-startable batch job: Job
        # credential revoked", seen twice on a busy machine)
        _wait_for(lambda: versions(root / "A")[-1].status() != RUNNING, "the old start")
        _wait_for(lambda: not _processes_of(jobs["A"]), "the old start's processes to end")
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={jobs['A']}", "StartTime=now"], check=True)
    states = _wait_until_idle(pipeline)
    assert states["A"] == states["ref"] == "COMPLETED"
    (version,) = versions(root / "A")
    manifest = version.manifest()
    assert manifest["status"] == "complete" and manifest["attempts"] == 3
    assert [e["slurm_requeues"] for e in manifest["executions"]] == [0, 1, 2]
    ours, ref = (torch.load(resolve(n, root).path / "model.pt", weights_only=True)["state_dict"]
                 for n in ("A", "ref"))
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    log = next((root / ".slurm" / "logs" / jobs["A"]).glob("*_log.out")).read_text()
    assert "requeueing job" in log and log.count("resuming at epoch") == 2


def _steps_done(root: Path) -> int:
    metrics = root / "A" / "v001" / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(json.loads(line)["kind"] == "step" for line in metrics.read_text().splitlines())


def _processes_of(job: str) -> list[int]:
    """The processes of a Slurm job still alive (their environment names the job)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"SLURM_JOB_ID={job}\0".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _wait_for(ready, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_job_started_more_often_than_its_requeues_allow_fails_at_once(
    tmp_path: Path, monkeypatch
) -> None:
    pipeline = _pipeline(tmp_path, """
        [resources]
        requeues = 2
        [[step]]
        name = "data"
        run = "preprocess nowhere"
    """)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    job = slurm.StepJob(pipeline.path, pipeline.runs_root, True, "data")
    with pytest.raises(WorkFailed, match="started 4 times, more than its 2 requeue"):
        job()


def test_cancel_cancels_queued_and_running_jobs_and_status_shows_them(
    cluster: None, source: Path, tmp_path: Path, vgg
) -> None:
    pipeline = _pipeline(tmp_path, DATA_THEN_A.format(source=source))
    jobs = slurm.submit(pipeline, report=lambda _: None)
    _wait_for(lambda: slurm.job_states().get(jobs["data"]) == "RUNNING", "data to start")
    cancelled = vgg("pipeline", "cancel", str(pipeline.path))
    assert cancelled.exit_code == 0 and "cancelled 2 job(s)" in cancelled.output, cancelled.output
    _wait_for(lambda: set(slurm.job_states().get(j) for j in jobs.values()) == {"CANCELLED"},
              "the jobs to end")
    time.sleep(3)  # a running step that got SIGTERM must not requeue its cancelled job
    assert set(slurm.job_states().get(j) for j in jobs.values()) == {"CANCELLED"}
    status = vgg("pipeline", "status", str(pipeline.path))
    assert status.exit_code == 0 and status.output.count("CANCELLED") == 2, status.output
    assert jobs["A"] in status.output
    again = vgg("pipeline", "cancel", str(pipeline.path))
    assert "no queued or running jobs" in again.output


def test_bad_resources_are_one_line_before_anything_is_submitted(
    cluster: None, source: Path, tmp_path: Path, vgg
) -> None:
    for resources, message in [
        ('gpus = 1', "unknown resource 'gpus'"),
        ('gpus_per_node = -1', "gpus_per_node must be an integer >= 0"),
        ('time = "soon"', "time must be minutes"),
        ('partition = "nowhere"', "partition 'nowhere' is not known to Slurm"),
    ]:
        path = tmp_path / "p.toml"
        path.write_text(f'[pipeline]\nruns_root = "{tmp_path / "runs"}"\n[resources]\n'
                        f'{resources}\n[[step]]\nname = "data"\nrun = "preprocess {source}"\n')
        result = vgg("pipeline", "run", str(path), "--executor", "slurm")
        assert result.exit_code == 2 and message in result.output, (resources, result.output)
        assert len(result.output.strip().splitlines()) <= 2  # the runs root, the error
    assert not (tmp_path / "runs" / ".slurm" / "jobs.json").exists()


def test_resources_parse_slurm_time_forms_and_step_overrides(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent("""
        [resources]
        time = "1-02:30:00"
        gpus_per_node = 4
        cpus_per_task = 32
        mem_gb = 500
        partition = "gpu"
        sbatch = { qos = "high", constraint = "h100" }
        [[step]]
        name = "data"
        run = "preprocess somewhere"
        resources = { gpus_per_node = 0, time = "02:00:00" }
        [[step]]
        name = "D"
        run = "train --net D --data {data}"
        resources = { nodes = 2 }
    """))
    pipeline = plan.load(path)
    data, d = pipeline.steps
    assert (data.resources.time, data.resources.gpus_per_node) == (120, 0)
    assert (d.resources.time, d.resources.nodes, d.resources.gpus_per_node) == (1590, 2, 4)
    parameters = slurm.sbatch_parameters(pipeline, d, ["17"])
    assert parameters["dependency"] == "afterok:17" and parameters["mem"] == "512000M"
    assert parameters["additional_parameters"]["qos"] == "high"
    assert parameters["ntasks_per_node"] == 1 and parameters["gpus_per_node"] == 4
    assert plan.critical_path(pipeline) == (["data", "D"], 1710)
    one_node = plan.Step("D1", "train", (), replace(d.resources, nodes=1))
    assert slurm.launch_command(["train"], one_node.resources)[-3:] == ["train", "--nproc", "4"]
    assert slurm.launch_command(["preprocess"], one_node.resources)[-1] == "preprocess"


@pytest.mark.parametrize("body, message", [
    ('[resources]\nnodes = 0\n', "nodes must be an integer >= 1"),
    ('[resources]\nmem_gb = "lots"\n', "mem_gb must be a positive number"),
    ('[resources]\nsbatch = "--qos=high"\n', "sbatch must be a table"),
    ('[resources]\nrequeues = 1.5\n', "requeues must be an integer >= 0"),
])
def test_bad_resources_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(body + '[[step]]\nname = "data"\nrun = "preprocess x"\n')
    with pytest.raises(VggError, match=message):
        plan.load(path)


def test_only_scaling_commands_may_ask_for_several_nodes(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[step]]\nname = "data"\nrun = "preprocess x"\nresources = { nodes = 2 }\n')
    with pytest.raises(VggError, match="only train, finetune-scale, evaluate run on several"):
        plan.load(path)


def test_a_dry_run_says_what_it_would_submit_and_touches_nothing(
    source: Path, tmp_path: Path, vgg
) -> None:
    pipeline = _pipeline(tmp_path, DATA_THEN_A.format(source=source))
    said: list[str] = []
    assert slurm.submit(pipeline, said.append, dry_run=True) == {"data": "<data>", "A": "<A>"}
    assert said[1].startswith("[bold]submit[/] A after <data>: vgg train")
    assert not (tmp_path / "runs").exists()  # no record, no logs, nothing submitted
