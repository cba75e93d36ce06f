"""`vgg report`: the paper's tables from a pipeline's runs, as a Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vggcli.commands.common import RunsRoot, existing_file, runs_root, user_errors


@user_errors
def command(
    pipeline: Annotated[Path | None, typer.Option(parser=existing_file, help="Report on this pipeline's runs root (e.g. pipelines/smoke.toml).")] = None,
    root: RunsRoot = None,
) -> None:
    """Write report.md (Tables 3-6 beside the paper's, every claim of Sect. 4 checked with a paired test, plots of training curves and error against test scale) as a new version of the run `report`."""
    from vggcli.stages import report as stage

    version = stage.run(stage.ReportRequest(pipeline, root), runs_root(root))
    typer.echo(f"report: {version.path / 'report.md'}")
