"""`vgg report`: the paper's tables from a pipeline's runs, as a Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import RunsRoot, user_errors


@user_errors
def command(
    pipeline: Annotated[Path | None, typer.Option(help="Report on this pipeline's runs root (e.g. pipelines/smoke.toml).")] = None,
    root: RunsRoot = None,
) -> None:
    """Write report.md (Tables 3-6 beside the paper's, the paper's orderings checked, plots of
    training curves and error against test scale) as a new version of the run `report`."""
    from vggcli import pipeline as pipelines
    from vggcli.progress import console
    from vggcli.report import write_report
    from vggcli.runs import RunWriter

    folder = pipelines.load(pipeline, root).runs_root if pipeline else (root or Path("runs"))
    with RunWriter.open(folder, "report", config={"root": str(folder)}, resume=False) as run:
        console.print(f"run directory: [bold]{run.path}[/]")
        text = write_report(folder, run.path)
        for plot in ("training-curves.png", "error-vs-scale.png"):
            run.record_output(plot)
        run.write_text("report.md", text)
    typer.echo(f"report: {run.path / 'report.md'}")
