"""The report stage: the newest complete runs under a runs root -> a report run holding
report.md (Tables 3-6 beside the paper's) and its plots."""

from __future__ import annotations

import json
from collections.abc import Callable
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
from vggcli.errors import VggError
from vggcli.metrics import top1_correct
from vggcli.pipeline import plan as pipelines
from vggcli.report import DEEPER, Curve, Evaluated, Fused, Scores, write_report
from vggcli.runs import MANIFEST, RunVersion
from vggcli.stages.common import lead_run, load_array

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
    if not folder.is_dir():
        raise VggError(f"no runs root {folder}: nothing to report on", field="runs_root")
    curves = [_curve(m) for m in latest_of_kind(folder, ModelRun) if _here(m, folder)]
    read: dict[Path, Evaluated] = {}  # each evaluation's posteriors read once

    def evaluated(evaluation: EvaluationRun) -> Evaluated:
        if evaluation.path not in read:
            read[evaluation.path] = _evaluated(evaluation, folder)
        return read[evaluation.path]

    evaluations = [e for e in latest_of_kind(folder, EvaluationRun) if _trained_here(e, folder)]
    tables = [evaluated(e) for e in evaluations]
    fusions = [(f, _members(f, folder)) for f in latest_of_kind(folder, FusionRun)]
    fused = [
        _fused(f, members, evaluated)
        for f, members in fusions
        if all(_trained_here(e, folder) for e in members)
    ]
    with lead_run(folder, "report", Kind.REPORT, {"root": str(folder)}, resume=False) as out:
        writer = out.writer
        text = write_report(folder, curves, tables, fused, writer.path)
        for plot in PLOTS:
            writer.record_output(plot)
        writer.write_text(ReportRun.REPORT, text)
    return out.version


def _curve(model: ModelRun) -> Curve:
    lines = model.metrics().read_text().splitlines()
    return Curve(
        model.name,
        [json.loads(line) for line in lines],
        model.width(),
        model.crop(),
        model.epochs(),
        model.finetuned_from() is not None,
        model.flips(),
        model.config(),  # the whole recipe, for its departures from the paper's
        model.initialised_from() or "",
    )


def _evaluated(evaluation: EvaluationRun, root: Path) -> Evaluated:
    """An evaluation, its model's training scale, and which images each of its error rows
    got right (read from the stored posteriors, for the paired tests)."""
    model = as_kind(parent(evaluation.version, 0, root), ModelRun)
    s_min, s_max = model.train_scales()
    results = evaluation.results()
    return Evaluated(
        model.net(),
        s_min,
        s_max,
        list(evaluation.scales()),
        evaluation.errors(),
        model.label,
        int(results.get("num_images", 0)),
        str(results.get("val_index_sha256", "")),
        _correct(evaluation),
        model.fc_only(),
        evaluation.flips(),
        model.crop(),
        random_init=model.net() in DEEPER and _chain_root(model, root).initialised_from() is None,
    )


def _chain_root(model: ModelRun, root: Path) -> ModelRun:
    """The run a chain of fine-tunes started from (the model itself when it is none): how it
    was initialised is how the whole chain was."""
    while (parent_run := _found(model.finetuned_from(), root)) is not None:
        model = parent_run
    return model


def _found(label: str | None, root: Path) -> ModelRun | None:
    """The model run `label` under the root; None when there is none, or it was moved or
    deleted (a lineage is then known up to there)."""
    path = root / label if label else None
    return as_kind(RunVersion(path), ModelRun) if path and (path / MANIFEST).is_file() else None


def _correct(evaluation: EvaluationRun) -> Scores:
    labels = load_array(evaluation.labels())
    scales = list(evaluation.scales())
    found: Scores = {}
    for row in evaluation.errors():
        method, at = row["method"], row["scales"]
        name = evaluation.posteriors_name(method, None if at == scales else at[0])
        if evaluation.has(name):
            found[(method, tuple(at))] = top1_correct(load_array(evaluation.file(name)), labels)
    return found


def _trained_here(evaluation: EvaluationRun, root: Path) -> bool:
    """The report's tables are of nets trained by the paper's recipe here: evaluations of
    imported weights (no training scale, another recipe), and of nets fine-tuned from them
    or started from an imported A, are left out."""
    return _here(as_kind(parent(evaluation.version, 0, root), ModelRun), root)


def _here(model: ModelRun, root: Path) -> bool:
    """No imported weights anywhere in the model's lineage (its fine-tune parents and the A
    it started from, found by label under the root; one not found counts as ours)."""
    if model.imported():
        return False
    ancestors = [_found(model.finetuned_from(), root), _found(model.initialised_from(), root)]
    return all(_here(ancestor, root) for ancestor in ancestors if ancestor is not None)


def _members(fusion: FusionRun, root: Path) -> list[EvaluationRun]:
    """A fusion's members' evaluations (its parents)."""
    return [
        as_kind(parent(fusion.version, i, root), EvaluationRun)
        for i in range(fusion.member_count())
    ]


def _fused(
    fusion: FusionRun, runs: list[EvaluationRun], evaluated: Callable[[EvaluationRun], Evaluated]
) -> Fused:
    """A fusion with its members' evaluations and its own per-image scores."""
    name = EvaluationRun.posteriors_name(fusion.mode())
    correct = None
    if fusion.has(name):
        labels = load_array(runs[0].labels())
        correct = top1_correct(load_array(fusion.file(name)), labels)
    return Fused(fusion.mode(), [evaluated(run) for run in runs], fusion.errors(), correct)
