"""The fuse stage (Table 6): each member's stored posteriors, then their average.

Members are evaluation runs, or model runs whose newest matching evaluation is used (and
made now, on the device asked for, when there is none). Fusing stored posteriors imports
neither torch nor FFCV: it is numpy over float16 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggcli.artifacts import (
    EvaluationRun,
    Kind,
    ModelRun,
    as_kind,
    find_evaluation,
    kind_of,
)
from vggcli.device import cpu_label
from vggcli.errors import VggError
from vggcli.eval_settings import FUSION_MODES, Mode, parse_mode
from vggcli.fuse import average, check_compatible
from vggcli.metrics import error_table
from vggcli.progress import console
from vggcli.runs import RunVersion, RunWriter, resolve
from vggcli.stages.common import announce, print_errors, save_posteriors

__all__ = ["FuseRequest", "run"]


@dataclass(frozen=True)
class FuseRequest:
    runs: tuple[str, ...]  # model runs or evaluation runs
    mode: str = Mode.DENSE
    multi_scale: bool = True
    precision: str = "auto"  # for members evaluated now
    device: str = "auto"  # for members evaluated now
    name: str | None = None  # default: fuse-D+E


def run(request: FuseRequest, root: Path) -> RunVersion:
    mode = parse_mode(request.mode, FUSION_MODES, "fusion mode")
    if len(request.runs) < 2:
        raise VggError("give at least two runs to fuse")
    evaluations = [_member(ref, root, mode, request) for ref in request.runs]
    members = [e.membership() for e in evaluations]
    check_compatible(members)
    labels = np.load(evaluations[0].labels())
    posteriors = {
        m["model"]: np.load(e.posteriors(mode)) for m, e in zip(members, evaluations, strict=True)
    }
    fused = average(list(posteriors.values()))
    rows = error_table({**posteriors, "fusion": fused}, labels)
    names = [e.name.removesuffix("-eval") for e in evaluations]
    config = {
        "members": [m["model"] for m in members],
        "mode": mode,
        "multi_scale": request.multi_scale,
    }
    with RunWriter.open(
        root,
        request.name or "fuse-" + "+".join(names),
        kind=Kind.FUSION,
        config=config,
        parents=[e.version for e in evaluations],
        device=cpu_label(),
    ) as writer:
        announce(writer)
        save_posteriors(writer, EvaluationRun.posteriors_name(mode), fused)
        writer.set_result("errors", rows)
    print_errors(f"fusion ({mode})", [{**r, "method": r["name"]} for r in rows])
    return writer.version


def _member(ref: str, root: Path, mode: Mode, request: FuseRequest) -> EvaluationRun:
    """An evaluation run holding `mode`'s posteriors for what the user named."""
    version = resolve(ref, root)
    kind = kind_of(version)
    if kind == Kind.EVALUATION:
        evaluation = EvaluationRun(version)
        if not evaluation.has_posteriors(mode):
            raise VggError(
                f"{version.label} has no '{mode}' posteriors (evaluated with "
                f"mode {evaluation.mode()})"
            )
        return evaluation
    if kind != Kind.MODEL:
        raise VggError(
            f"{version.label} is not a trained model run; it cannot provide '{mode}' posteriors"
        )
    model = ModelRun(version)
    scales = model.default_test_scales(request.multi_scale)
    found = find_evaluation(model, root, mode, scales)
    if found is not None:
        return found
    from vggcli.stages import evaluate  # torch and FFCV, only when a member needs them

    console.print(f"no {mode} posteriors for {model.label}: evaluating it first")
    evaluated = evaluate.run(
        evaluate.EvaluateRequest(
            str(model.path),
            mode,
            request.multi_scale,
            precision=request.precision,
            device=request.device,
        ),
        root,
    )
    return as_kind(evaluated, EvaluationRun)
