"""Run a pipeline on this machine: up to `jobs` ready steps at once, each on its own share of
the cores (and of the GPUs: CUDA_VISIBLE_DEVICES's, or nvidia-smi's), each a child of a warm
launcher.

A step is ready when every input step has a complete run. A failed step stops the steps that
need it; the others go on, and the run ends with an error naming what failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from vggcli.errors import VggError, WorkFailed
from vggcli.pipeline.plan import SCALES_OUT, Pipeline, Step, dependants, resolve_args, states
from vggcli.zygote import Launch, warm_launcher

Report = Callable[[str], None]


@dataclass(frozen=True)
class Slot:
    """One of the `jobs` places a step can run in: its cores and GPUs."""

    cores: tuple[int, ...]
    gpus: tuple[str, ...] | None  # None: leave CUDA_VISIBLE_DEVICES as it is

    def environment(self, shared: bool) -> dict[str, str]:
        """The step's environment; `shared` (several slots) pins its threads and GPUs."""
        env = dict(os.environ)
        if shared:
            env["OMP_NUM_THREADS"] = str(len(self.cores))
            if self.gpus is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def slots(jobs: int, nproc: int = 1) -> list[Slot]:
    """Split this process's cores, and its GPUs (CUDA_VISIBLE_DEVICES, or every GPU
    nvidia-smi lists), into `jobs` parts so concurrent steps never oversubscribe the machine."""
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        raise VggError(f"{jobs} concurrent steps are more than the {len(cores)} cores here",
                       field="jobs")
    gpus = visible_gpus() if jobs > 1 else None
    if gpus is not None and jobs > len(gpus):
        raise VggError(f"{jobs} concurrent steps are more than the {len(gpus)} GPUs here",
                       field="jobs")
    if gpus is not None and nproc > len(gpus) // jobs:
        raise VggError(f"{nproc} processes per step, but with --jobs {jobs} each step gets "
                       f"{len(gpus) // jobs} of the {len(gpus)} GPUs", field="nproc")
    return [
        Slot(tuple(_part(cores, jobs, i)), None if gpus is None else tuple(_part(gpus, jobs, i)))
        for i in range(jobs)
    ]


def visible_gpus() -> list[str] | None:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list
    (without importing torch); None on a machine without NVIDIA GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return None
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                            capture_output=True, text=True)
    found = [line.strip() for line in listed.stdout.splitlines() if line.strip().isdigit()]
    return found or None


def _part(items: list, parts: int, index: int) -> list:
    """The `index`-th of `parts` contiguous, near-equal parts of `items`."""
    size, extra = divmod(len(items), parts)
    start = index * size + min(index, extra)
    return items[start : start + size + (index < extra)]


def run(pipeline: Pipeline, dry_run: bool, report: Report = print, nproc: int = 1,
        jobs: int = 1) -> list[str]:
    """Run every step not yet done, inputs first, up to `jobs` at once; return the names of
    the steps run. With `nproc` > 1 the training and evaluation steps run under torchrun;
    that is not part of a step's command (results do not depend on it), so finished steps
    stay finished."""
    places = slots(jobs, nproc)
    done = set()
    known = states(pipeline)
    for step in pipeline.steps:
        status, version = known[step.name]
        if status == "done":
            report(f"[dim]skip[/] {step.name}: done ({version.label if version else ''})")
            done.add(step.name)
        elif dry_run:
            args = resolve_args(pipeline, step)
            report(f"[bold]{status}[/] {step.name}: vgg {' '.join(args) if args else step.command}")
    if dry_run:
        return []
    return _Scheduler(pipeline, places, report, nproc).run(done)


class _Scheduler:
    """Starts ready steps in free slots, each slot with its own warm launcher."""

    def __init__(self, pipeline: Pipeline, places: list[Slot], report: Report, nproc: int):
        self.pipeline, self.report, self.nproc = pipeline, report, nproc
        self.free = list(places)
        self.shared = len(places) > 1
        self.launchers: dict[Slot, Launch] = {}

    def run(self, done: set[str]) -> list[str]:
        executed: list[str] = []
        failed: dict[str, int] = {}
        stopped: set[str] = set()
        running: dict[Future[int], tuple[Step, Slot]] = {}
        with contextlib.ExitStack() as self.stack, ThreadPoolExecutor(len(self.free)) as pool:
            while True:
                for step in self._ready(done, failed, stopped, running):
                    slot = self.free.pop(0)
                    launcher = self._launcher(slot)  # started here, in the main thread
                    running[pool.submit(self._launch, step, slot, launcher)] = (step, slot)
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    step, slot = running.pop(future)
                    self.free.append(slot)
                    try:
                        code = future.result()
                    except WorkFailed as exc:  # its launcher died: the step failed
                        self.report(f"[red]{exc}[/]")
                        code = 1
                    if code == 0:
                        done.add(step.name)
                        executed.append(step.name)
                        continue
                    failed[step.name] = code
                    blocked = [n for n in dependants(self.pipeline, step.name) if n not in stopped]
                    stopped.update(blocked)
                    self.report(f"[red]failed[/] {step.name} (exit {code})"
                                + (f"; not starting {', '.join(blocked)}" if blocked else ""))
        if failed:
            steps = ", ".join(f"{n} (exit {c})" for n, c in failed.items())
            raise WorkFailed(f"{self.pipeline.path}: step(s) {steps} failed"
                             + (f", so {len(stopped)} step(s) after them did not run" if stopped
                                else "") + "; fix and re-run to resume")
        return executed

    def _ready(self, done: set[str], failed: dict[str, int], stopped: set[str],
               running: dict[Future[int], tuple[Step, Slot]]) -> list[Step]:
        """Steps whose inputs are all done, in file order, as many as there are free slots."""
        busy = {step.name for step, _ in running.values()}
        ready = [s for s in self.pipeline.steps
                 if s.name not in done | busy | set(failed) | stopped
                 and all(i in done for i in s.inputs)]
        return ready[: len(self.free)]

    def _launcher(self, slot: Slot) -> Launch:
        """The slot's warm launcher, started the first time the slot is used."""
        if slot not in self.launchers:
            cores = slot.cores if self.shared else None
            self.launchers[slot] = self.stack.enter_context(warm_launcher(cores))
        return self.launchers[slot]

    def _launch(self, step: Step, slot: Slot, launcher: Launch) -> int:
        """Run one step in `slot` (in a pool thread: the launcher call blocks until it ends)."""
        args = resolve_args(self.pipeline, step)
        assert args is not None  # its inputs are done
        self.report(f"[bold]run[/] {step.name}: vgg {' '.join(args)}")
        env = {**slot.environment(self.shared), "VGG_RUNS": str(self.pipeline.runs_root)}
        launch = ["--nproc", str(self.nproc)] if self.nproc > 1 and args[0] in SCALES_OUT else []
        return launcher([*args, *launch], env)
