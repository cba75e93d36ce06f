"""`vgg verify RUN`: check a run and its parents against their recorded sha256."""

from __future__ import annotations

from typing import Annotated

import typer

from vggcli.commands.common import RunsRoot, run_reference, runs_root, user_errors
from vggcli.errors import WorkFailed


@user_errors
def command(
    run: Annotated[str, typer.Argument(callback=run_reference, help="A run (its latest complete version) or a version, e.g. runs/D or runs/D/v002.")],
    root: RunsRoot = None,
) -> None:
    """Hash every file of a run version and of its parents (dataset, init and fine-tune parents, evaluated models) against the size and sha256 recorded when they were written; exit 1 if any differs."""
    from rich.table import Table

    from vggcli.progress import console
    from vggcli.stages import verify as stage

    checked = stage.run(run, runs_root(root))
    table = Table("run", "file", "size", "state", title=f"vgg verify {run}")
    for row in checked:
        size = "" if row.size is None else f"{row.size:,}"
        state = "[green]ok[/]" if row.problem is None else f"[red]{row.problem}[/]"
        table.add_row(row.label, row.name, size, state)
    console.print(table)
    damaged = [row for row in checked if row.problem is not None]
    if damaged:
        first = damaged[0]
        raise WorkFailed(
            f"{len(damaged)} of {len(checked)} files damaged, first {first.label}/{first.name} "
            f"({first.problem})"
        )
    typer.echo(f"verified: {len(checked)} files match their recorded sha256")
