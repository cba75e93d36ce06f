"""Run a pipeline on Slurm: every unfinished step a job (submitted with submitit), each
depending on its inputs' jobs (`afterok`), so the scheduler runs the graph.

- The job ids are kept in `<runs root>/.slurm/jobs.json`; a step whose recorded job is still
  queued or running is not submitted again, and later steps depend on that job.
- A job resolves its step's command when it starts (its inputs' runs exist only then), skips
  a step that is already done, and runs `vgg ...` as a child process.
- Preemption and time limits: Slurm sends SIGUSR2 `SIGNAL_BEFORE_S` before the limit; the
  job passes it on as SIGTERM, the step writes a checkpoint and exits 75, and the job
  requeues itself while the step's `requeues` allow. On preemption or `scontrol requeue`
  Slurm sends SIGTERM and requeues the job itself; on `scancel` it stays cancelled. A job
  started more often than `requeues` allows fails at once. The requeued job resumes from the
  checkpoint. Any other failure is final, and Slurm cancels the jobs that depend on it
  (`--kill-on-invalid-dep=yes`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vggcli.errors import PREEMPTED, VggError, WorkFailed
from vggcli.files import atomic_write_json
from vggcli.pipeline.plan import SCALES_OUT, Pipeline, Step, load, resolve_args, state, states
from vggcli.pipeline.resources import Resources

SIGNAL_BEFORE_S = 120  # warning before the time limit: time to write a checkpoint
RENDEZVOUS_PORT = 29500  # torchrun's c10d store on a multi-node step's first node (+ job % 10000)
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED")  # fmt: skip

Report = Callable[[str], None]


def folder(pipeline: Pipeline) -> Path:
    """Where the job ids and the jobs' logs live: beside the runs they make."""
    return pipeline.runs_root / ".slurm"


# -- the record of submitted jobs ------------------------------------------------------------


@contextlib.contextmanager
def _jobs_record(pipeline: Pipeline) -> Iterator[dict[str, dict[str, str]]]:
    """step name -> {"job": id, "submitted": time}, locked so that two submissions of the
    same pipeline never submit a step twice, written back atomically."""
    where = folder(pipeline)
    where.mkdir(parents=True, exist_ok=True)
    with (where / "jobs.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jobs = recorded_jobs(pipeline)
        try:
            yield jobs
        finally:  # also when a submission failed halfway: the jobs before it are queued
            atomic_write_json(where / "jobs.json", {"pipeline": str(pipeline.path), "steps": jobs})


def recorded_jobs(pipeline: Pipeline) -> dict[str, dict[str, str]]:
    path = folder(pipeline) / "jobs.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WorkFailed(f"{path} is damaged ({exc}); remove it to forget the jobs") from exc
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, dict):
        raise WorkFailed(f"{path} is damaged (no steps table); remove it to forget the jobs")
    return steps


def job_states() -> dict[str, str]:
    """Slurm's state of each job it still knows (queued, running, or recently finished)."""
    out = _slurm(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T"])
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def _slurm(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise VggError(f"`{command[0]}` not found: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise WorkFailed(f"`{' '.join(command)}` did not answer in 60 s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise WorkFailed(f"`{command[0]}` failed: {message[-1] if message else done.returncode}")
    return done.stdout


def active(state_name: str | None) -> bool:
    return state_name is not None and state_name.split()[0] not in FINISHED


# -- submitting --------------------------------------------------------------------------------


def submit(pipeline: Pipeline, report: Report = print, dry_run: bool = False) -> dict[str, str]:
    """Submit every step that is neither done nor queued; return step -> job id of every step
    that has a job now (queued ones included). With `dry_run`, say what would be submitted
    and touch nothing (steps to submit appear as `<step>` where job ids would be)."""
    if not dry_run:
        _check_partitions(pipeline)
    jobs: dict[str, str] = {}
    fresh: set[str] = set()  # steps submitted by this call
    known = states(pipeline)
    reading = contextlib.nullcontext(recorded_jobs(pipeline))
    with reading if dry_run else _jobs_record(pipeline) as record:
        queue = job_states() if record else {}
        for step in pipeline.steps:
            status, version = known[step.name]
            if status == "done":
                report(f"[dim]skip[/] {step.name}: done ({version.label if version else ''})")
                continue
            old = record.get(step.name, {}).get("job")
            if old is not None and active(queue.get(old)):
                if not any(i in fresh for i in step.inputs):
                    jobs[step.name] = old
                    report(f"[dim]keep[/] {step.name}: job {old} is {queue[old].lower()}")
                    continue
                if not dry_run:
                    _slurm(["scancel", old])  # it waits on an input job that was replaced
            after = [jobs[i] for i in step.inputs if i in jobs]
            fresh.add(step.name)
            if dry_run:
                jobs[step.name] = f"<{step.name}>"
                report(f"[bold]submit[/] {step.name}" + (f" after {', '.join(after)}" if after
                                                         else "") + f": vgg {step.command}")
                continue
            jobs[step.name] = _submit_step(pipeline, step, after)
            record[step.name] = {"job": jobs[step.name], "submitted": _now()}
            report(f"[bold]submitted[/] {step.name}: job {jobs[step.name]}"
                   + (f" (after {', '.join(after)})" if after else ""))
    return jobs


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_partitions(pipeline: Pipeline) -> None:
    """An unknown partition is one line before any job is submitted (sbatch would refuse it
    only when its step's turn came, after the steps before it were queued)."""
    for name in sorted({s.resources.partition for s in pipeline.steps if s.resources.partition}):
        try:
            _slurm(["scontrol", "show", "partition", name])
        except WorkFailed:
            raise VggError(f"{pipeline.path}: partition '{name}' is not known to Slurm "
                           "(`sinfo` lists them)") from None


def _submit_step(pipeline: Pipeline, step: Step, after: list[str]) -> str:
    import submitit

    executor = submitit.SlurmExecutor(folder=folder(pipeline) / "logs" / "%j")
    executor.update_parameters(**sbatch_parameters(pipeline, step, after))
    try:
        job = executor.submit(StepJob(pipeline.path.resolve(), pipeline.runs_root.resolve(),
                                      pipeline.flip, step.name, pipeline.overrides))
    except submitit.core.utils.FailedJobError as exc:
        lines = [line for line in str(exc).splitlines() if "sbatch: error" in line] or [str(exc)]
        raise WorkFailed(f"step {step.name}: Slurm refused the job: {lines[-1].strip()}") from None
    return str(job.job_id)


def sbatch_parameters(pipeline: Pipeline, step: Step, after: list[str]) -> dict:
    """The step's resources as submitit's SlurmExecutor parameters: one task per node (which
    starts torchrun for several GPUs or nodes), requeueable, a signal before the limit."""
    wanted: Resources = step.resources
    extra: dict = {"requeue": True, "kill-on-invalid-dep": "yes", "chdir": str(Path.cwd()),
                   **wanted.sbatch}
    parameters = {
        "job_name": f"{pipeline.path.stem}.{step.name}",
        "nodes": wanted.nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": wanted.cpus_per_task,
        "time": wanted.time,
        "signal_delay_s": min(SIGNAL_BEFORE_S, wanted.time * 15),  # short limits: a quarter
        "stderr_to_stdout": True,
        "additional_parameters": extra,
    }
    if wanted.gpus_per_node:
        parameters["gpus_per_node"] = wanted.gpus_per_node
    if wanted.mem_gb is not None:
        parameters["mem"] = f"{max(1, round(wanted.mem_gb * 1024))}M"
    if wanted.partition:
        parameters["partition"] = wanted.partition
    if wanted.account:
        parameters["account"] = wanted.account
    if after:
        parameters["dependency"] = "afterok:" + ":".join(after)
    return parameters


def step_table(pipeline: Pipeline) -> list[tuple[str, str, str, str]]:
    """(step, run state, job id, Slurm state) for every step."""
    record, queue, known = recorded_jobs(pipeline), job_states(), states(pipeline)
    rows = []
    for step in pipeline.steps:
        status, version = known[step.name]
        job = record.get(step.name, {}).get("job", "")
        shown = f"{status} ({version.label})" if version else status
        rows.append((step.name, shown, job, queue.get(job, "") if job else ""))
    return rows


def follow(pipeline: Pipeline, show: Callable[[list[tuple[str, str, str, str]]], None],
           every_s: float = 10.0) -> list[str]:
    """Call `show` with the step table every `every_s` seconds until none of the pipeline's
    jobs is queued or running; return the steps that are not done then."""
    import time

    while True:
        rows = step_table(pipeline)
        show(rows)
        if not any(active(slurm_state) for *_, slurm_state in rows if slurm_state):
            return [name for name, status, *_ in rows if not status.startswith("done")]
        time.sleep(every_s)


def cancel(pipeline: Pipeline, report: Report = print) -> list[str]:
    """scancel every queued or running job of the pipeline; return their ids."""
    names = {s.name for s in pipeline.steps}  # another pipeline may share the runs root
    with _jobs_record(pipeline) as record:
        queue = job_states()
        ours = {n: e["job"] for n, e in record.items() if n in names and "job" in e}
        ids = [job for job in ours.values() if active(queue.get(job))]
        if ids:
            _slurm(["scancel", *ids])
        for name, job in ours.items():
            if job in ids:
                report(f"cancelled {name}: job {job}")
    return ids


# -- inside the job ----------------------------------------------------------------------------


@dataclass
class StepJob:
    """What a step's Slurm job runs (pickled by submitit): the step, resolved when it starts."""

    pipeline_path: Path
    runs_root: Path
    flip: bool
    step_name: str
    overrides: tuple[tuple[str, str], ...] = ()  # the submitting command's `--set`

    def __call__(self) -> None:
        plan = load(self.pipeline_path, self.runs_root, self.flip, self.overrides)
        step = plan.step(self.step_name)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts > step.resources.requeues:  # Slurm's own requeues count too
            raise WorkFailed(f"step {step.name}: started {restarts + 1} times, more than its "
                             f"{step.resources.requeues} requeue(s) allow (resources.requeues)")
        if state(plan, step)[0] == "done":
            print(f"{step.name} is already done", flush=True)
            return
        args = resolve_args(plan, step)
        if args is None:
            raise WorkFailed(f"step {step.name}: an input has no complete run")
        os.environ["VGG_RUNS"] = str(self.runs_root)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if cpus.isdigit():  # the job's cores, shared by the processes of this node
            threads = int(cpus) // step.resources.processes_per_node
            os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
        code, signalled = _run_passing_signals(launch_command(args, step.resources))
        if code == 0:
            return
        if code == PREEMPTED or signalled:
            self._stopped(step, code, restarts)
        raise WorkFailed(f"step {step.name} failed (exit {code})")

    def _stopped(self, step: Step, code: int, restarts: int) -> None:
        """The step checkpointed and stopped on a signal. If Slurm is ending the job itself
        (it requeued or cancelled it: preemption, `scontrol requeue`, `scancel`), leave it
        to Slurm; if the job still runs (the warning before the time limit, or a signal
        sent with `scancel --signal`), requeue it while the step's `requeues` allow."""
        job = os.environ["SLURM_JOB_ID"]
        ours = job_states().get(job, "")
        if ours != "RUNNING" or os.environ.get("SLURM_PROCID", "0") != "0":
            sys.exit(PREEMPTED)  # Slurm ends (or requeued) this run; only task 0 requeues
        if restarts >= step.resources.requeues:
            raise WorkFailed(f"step {step.name} stopped (exit {code}) after {restarts} "
                             f"requeue(s), its limit (resources.requeues)")
        print(f"{step.name} stopped after a checkpoint: requeueing job {job} "
              f"(requeue {restarts + 1} of {step.resources.requeues})", flush=True)
        _slurm(["scontrol", "requeue", job])
        sys.exit(PREEMPTED)  # Slurm ends this run of the job; the requeued one resumes


def launch_command(args: list[str], wanted: Resources) -> list[str]:
    """The command one task (one per node) runs: `vgg ARGS` itself, with `--nproc` for
    several GPUs on one node, or torchrun with c10d rendezvous on the job's first node."""
    python = [sys.executable, "-u", "-m"]
    if wanted.nodes == 1:
        nproc = wanted.processes_per_node
        launch = ["--nproc", str(nproc)] if nproc > 1 and args[0] in SCALES_OUT else []
        return [*python, "vggcli", *args, *launch]
    first = _slurm(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]]).split()[0]
    job = os.environ["SLURM_JOB_ID"]
    port = RENDEZVOUS_PORT + int(job) % 10000  # two jobs sharing a first node: two ports
    return [*python, "torch.distributed.run", f"--nnodes={wanted.nodes}",
            f"--nproc-per-node={wanted.processes_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={first}:{port}", f"--rdzv-id={job}", "-m", "vggcli", *args]


def _run_passing_signals(command: list[str]) -> tuple[int, bool]:
    """Run `command`; SIGUSR2 (the time limit is near) and SIGTERM (preemption) become a
    SIGTERM for it, the request to checkpoint and stop. Returns its exit code and whether a
    signal came. The child ignores SIGUSR2, which Slurm sends to every process of the step."""
    came: list[int] = []
    child: subprocess.Popen | None = None

    def pass_on(signum: int, _frame: object) -> None:
        came.append(signum)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        child = subprocess.Popen(command, preexec_fn=_ignore_usr2)
        if came:  # a signal before the child existed
            child.send_signal(signal.SIGTERM)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code, bool(came)


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
