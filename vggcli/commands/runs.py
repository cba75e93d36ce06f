"""`vgg runs`: what is in the runs folder, version by version."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from vggcli.commands.common import RunsRoot, runs_root, user_errors
from vggcli.errors import VggError


@user_errors
def command(root: RunsRoot = None) -> None:
    """List every run and version with its kind, status, start time and parents."""
    from vggcli.stages.listing import rows

    folder = runs_root(root)
    if not folder.is_dir():
        raise VggError(f"no runs root {folder}", field="runs_root")
    found = rows(folder)
    if not found:
        typer.echo(f"no runs under {folder}")
        return
    table = Table("run", "version", "kind", "status", "started", "parents")
    for row in found:
        table.add_row(row.run, row.version, row.kind, row.status, row.started, row.parents)
    Console().print(table)
