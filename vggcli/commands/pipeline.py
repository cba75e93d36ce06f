"""`vgg pipeline run|status|cancel FILE`: the declarative, resumable experiment pipelines, on
this machine (up to --jobs steps at once) or as Slurm jobs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import (
    NoVerify,
    NProc,
    RunsRoot,
    assignment,
    bounded,
    existing_file,
    user_errors,
)
from vggcli.errors import WorkFailed

app = typer.Typer(help="Run a pipelines/*.toml file step by step, skipping finished steps.",
                  no_args_is_help=True)
File = Annotated[Path, typer.Argument(parser=existing_file, help="A pipeline file, e.g. pipelines/smoke.toml.")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="--no-flip adds --no-flip to every train step (mirror-sensitive classes: no training flips, and evaluations and fusions follow the models); finished steps made with flips are not reused.")]


def _assignments(texts: list[str] | None) -> tuple[tuple[str, str], ...]:
    """The (NAME, VALUE) pairs of `--set`, in order (a later one for a name wins)."""
    return tuple((name, value) for name, _, value in (t.partition("=") for t in texts or ()))


Sets = Annotated[list[str] | None, typer.Option("--set", metavar="NAME=VALUE", parser=assignment, help="Replace a variable of the file's [vars] (repeatable), e.g. --set finetune='--epochs 4': steps whose command changes make new versions, the others stay done.")]


class Executor(StrEnum):
    local = "local"
    slurm = "slurm"


@app.command("run")
@user_errors
def run_command(
    file: File,
    dry_run: Annotated[bool, typer.Option(help="Print the plan (each step's state and command, the waves of steps that can run at once, the critical path) and stop.")] = False,
    jobs: Annotated[int, typer.Option(callback=bounded(1, 1024), help="Run up to N ready steps at once on this machine, each on its share of the cores (and of the GPUs: CUDA_VISIBLE_DEVICES's, or every one nvidia-smi lists).")] = 1,
    executor: Annotated[Executor, typer.Option(help="local: run the steps here; slurm: submit every unfinished step as a Slurm job depending on its inputs' jobs, then return (--wait to follow them).")] = Executor.local,
    wait: Annotated[bool, typer.Option(help="With --executor slurm: follow the jobs with a live table until none is queued or running.")] = False,
    nproc: NProc = 1,
    no_verify: NoVerify = False,
    flip: Flip = True,
    sets: Sets = None,
    root: RunsRoot = None,
) -> None:
    """Run the steps in dependency order; finished steps are skipped, interrupted ones resume."""
    from vggcli.pipeline import plan as plans
    from vggcli.progress import console

    plan = plans.load(file, root, flip, _assignments(sets))
    console.print(f"runs root: [bold]{plan.runs_root}[/]")
    if executor == Executor.slurm:
        if jobs != 1 or nproc != 1:
            raise typer.BadParameter("with --executor slurm, each step's resources come from the pipeline file", param_hint="'--jobs' / '--nproc'")
        _run_on_slurm(plan, dry_run, wait)
    else:
        from vggcli.pipeline import local

        executed = local.run(plan, dry_run, console.print, nproc, jobs)
        if not dry_run:
            typer.echo(f"done: {len(executed)} step(s) run, runs in {plan.runs_root}")
    if dry_run:
        for line in plans.graph_summary(plan):
            console.print(line)


def _run_on_slurm(plan, dry_run: bool, wait: bool) -> None:
    from vggcli.pipeline import slurm
    from vggcli.progress import console

    jobs = slurm.submit(plan, console.print, dry_run)
    if dry_run:
        return
    typer.echo(f"submitted: {len(jobs)} step(s) queued as Slurm jobs; logs in {slurm.folder(plan)}")
    if wait:
        from rich.live import Live

        with Live(console=console, auto_refresh=False) as live:
            left = slurm.follow(plan, lambda rows: live.update(_table(plan, rows), refresh=True))
        if left:
            raise WorkFailed(f"{plan.path}: step(s) {', '.join(left)} did not finish; `vgg pipeline status {plan.path}` and the logs in {slurm.folder(plan)} say why")
        typer.echo(f"done: every step complete, runs in {plan.runs_root}")


def _table(plan, rows):
    from rich.table import Table

    table = Table("step", "run", "job", "Slurm", title=f"{plan.path} (runs in {plan.runs_root})")
    for row in rows:
        table.add_row(*row)
    return table


@app.command("status")
@user_errors
def status_command(file: File, flip: Flip = True, sets: Sets = None, root: RunsRoot = None) -> None:
    """Show each step's state (done, to run, interrupted, waiting for inputs) and, for steps submitted to Slurm, the job id and its Slurm state."""
    from rich.table import Table

    from vggcli.pipeline import plan as plans
    from vggcli.pipeline import slurm
    from vggcli.progress import console

    plan = plans.load(file, root, flip, _assignments(sets))
    if set(slurm.recorded_jobs(plan)) & {step.name for step in plan.steps}:
        console.print(_table(plan, slurm.step_table(plan)))
        return
    table = Table("step", "state", "run", "command", title=f"{file} (runs in {plan.runs_root})")
    known = plans.states(plan)  # as the runners see them: done only when the inputs are
    for step in plan.steps:
        state, version = known[step.name]
        table.add_row(step.name, state, version.label if version else "", step.command)
    console.print(table)


@app.command("cancel")
@user_errors
def cancel_command(file: File, flip: Flip = True, root: RunsRoot = None) -> None:
    """Cancel the pipeline's queued and running Slurm jobs (their runs resume when submitted again)."""
    from vggcli.pipeline import plan as plans
    from vggcli.pipeline import slurm
    from vggcli.progress import console

    plan = plans.load(file, root, flip)
    ids = slurm.cancel(plan, console.print)
    typer.echo(f"cancelled {len(ids)} job(s)" if ids else "no queued or running jobs")
