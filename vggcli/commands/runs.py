"""`vgg runs`: what is in the runs folder, version by version."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from vggcli.commands.common import RunsRoot, runs_root, user_errors


@user_errors
def command(root: RunsRoot = None) -> None:
    """List every run and version with its status, start time and parents."""
    from vggcli.runs import list_runs, versions

    table = Table("run", "version", "status", "started", "parents")
    folder = runs_root(root)
    for run_dir in list_runs(folder):
        for version in versions(run_dir):
            manifest = version.manifest()
            parents = ", ".join(f"{p['run']}/{p['version']}" for p in manifest.get("parents", []))
            table.add_row(run_dir.name, version.path.name, version.status(),
                          str(manifest.get("started", "")), parents)
    if not table.rows:
        typer.echo(f"no runs under {folder}")
        return
    Console().print(table)
