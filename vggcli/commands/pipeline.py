"""`vgg pipeline run|status FILE`: the declarative, resumable experiment pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import NoVerify, NProc, RunsRoot, user_errors

app = typer.Typer(help="Run a pipelines/*.toml file step by step, skipping finished steps.",
                  no_args_is_help=True)
File = Annotated[Path, typer.Argument(help="A pipeline file, e.g. pipelines/smoke.toml.")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="--no-flip adds --no-flip to every train step (mirror-sensitive classes: no training flips, and evaluations and fusions follow the models); finished steps made with flips are not reused.")]


@app.command("run")
@user_errors
def run_command(
    file: File,
    dry_run: Annotated[bool, typer.Option(help="Print the plan (each step's state and command) and stop.")] = False,
    nproc: NProc = 1,
    no_verify: NoVerify = False,
    flip: Flip = True,
    root: RunsRoot = None,
) -> None:
    """Run the steps in dependency order; finished steps are skipped, interrupted ones resume."""
    from vggcli.progress import console
    from vggcli.stages import pipeline

    plan = pipeline.load(file, root, flip)
    console.print(f"runs root: [bold]{plan.runs_root}[/]")
    executed = pipeline.run(plan, dry_run, console.print, nproc)
    if not dry_run:
        typer.echo(f"done: {len(executed)} step(s) run, runs in {plan.runs_root}")


@app.command("status")
@user_errors
def status_command(file: File, flip: Flip = True, root: RunsRoot = None) -> None:
    """Show each step's state: done, to run, interrupted, waiting for inputs."""
    from rich.table import Table

    from vggcli.progress import console
    from vggcli.stages import pipeline

    plan = pipeline.load(file, root, flip)
    table = Table("step", "state", "run", "command", title=f"{file} (runs in {plan.runs_root})")
    for step in plan.steps:
        state, version = pipeline.state(plan, step)
        table.add_row(step.name, state, version.label if version else "", step.command)
    console.print(table)
