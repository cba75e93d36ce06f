"""The report stage: the newest complete runs under a runs root -> a report run holding
report.md (Tables 3-6 beside the paper's) and its plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vggcli.artifacts import (
    EvaluationRun,
    FusionRun,
    Kind,
    ModelRun,
    ReportRun,
    as_kind,
    latest_of_kind,
    parent,
)
from vggcli.report import Curve, Evaluated, Fused, write_report
from vggcli.runs import RunVersion, RunWriter
from vggcli.stages import pipeline as pipelines
from vggcli.stages.common import announce

__all__ = ["ReportRequest", "run"]

PLOTS = ("training-curves.png", "error-vs-scale.png")


@dataclass(frozen=True)
class ReportRequest:
    pipeline: Path | None = None  # report on this pipeline's runs root
    runs_root: Path | None = None  # ... unless a runs root is given explicitly


def run(request: ReportRequest, root: Path) -> RunVersion:
    """A new version of the run `report` beside the runs it describes: under the explicit
    runs root, else the pipeline's, else `root`."""
    folder = request.runs_root or root
    if request.pipeline is not None:
        folder = pipelines.load(request.pipeline, request.runs_root).runs_root
    curves = [_curve(m) for m in latest_of_kind(folder, ModelRun)]
    evaluated = [_evaluated(e, folder) for e in latest_of_kind(folder, EvaluationRun)]
    fused = [
        Fused(f.mode(), len(f.members()), f.errors()) for f in latest_of_kind(folder, FusionRun)
    ]
    with RunWriter.open(
        folder, "report", kind=Kind.REPORT, config={"root": str(folder)}, resume=False
    ) as writer:
        announce(writer)
        text = write_report(folder, curves, evaluated, fused, writer.path)
        for plot in PLOTS:
            writer.record_output(plot)
        writer.write_text(ReportRun.REPORT, text)
    return writer.version


def _curve(model: ModelRun) -> Curve:
    lines = model.metrics().read_text().splitlines()
    return Curve(model.name, [json.loads(line) for line in lines])


def _evaluated(evaluation: EvaluationRun, root: Path) -> Evaluated:
    model = as_kind(parent(evaluation.version, 0, root), ModelRun)
    s_min, s_max = model.train_scales()
    return Evaluated(model.net(), s_min, s_max, list(evaluation.scales()), evaluation.errors())
