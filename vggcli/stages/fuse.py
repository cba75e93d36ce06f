"""The fuse stage (Table 6): each member's stored posteriors, then their average.

Members are evaluation runs, or model runs whose newest matching evaluation is used (and
made now, on the device asked for, when there is none). Fusing stored posteriors imports
neither torch nor FFCV: it is numpy over the stored float32 arrays (older runs: float16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggcli import integrity
from vggcli.artifacts import (
    EvaluationRun,
    Kind,
    ModelRun,
    as_kind,
    find_evaluation,
    kind_of,
    parent,
)
from vggcli.device import cpu_label
from vggcli.errors import VggError, WorkFailed
from vggcli.eval_settings import FUSION_MODES, Mode, parse_mode
from vggcli.fuse import average, check_compatible
from vggcli.metrics import error_table
from vggcli.progress import console
from vggcli.runs import MANIFEST, RunVersion, resolve
from vggcli.stages.common import lead_run, load_array, print_errors, save_posteriors

__all__ = ["FuseRequest", "run"]


@dataclass(frozen=True)
class FuseRequest:
    runs: tuple[str, ...]  # model runs or evaluation runs
    mode: str = Mode.DENSE
    multi_scale: bool = True
    precision: str = "auto"  # for members evaluated now
    device: str = "auto"  # for members evaluated now
    name: str | None = None  # default: fuse-D+E
    flip: bool | None = None  # mirror averaging; default: as each member was trained


def run(request: FuseRequest, root: Path) -> RunVersion:
    mode = parse_mode(request.mode, FUSION_MODES, "fusion mode")
    if len(request.runs) < 2:
        raise VggError("give at least two runs to fuse")
    named = [resolve(ref, root) for ref in request.runs]
    _refuse_repeats([_identity(version, request.multi_scale) for version in named], mode)
    evaluations = [_member(version, root, mode, request) for version in named]
    if integrity.enabled():
        for evaluation in evaluations:
            _verify_model(evaluation, root)
    members = [e.membership() for e in evaluations]
    check_compatible(members)
    labels = load_array(evaluations[0].labels())
    posteriors = {
        m["model"]: load_array(e.posteriors(mode))
        for m, e in zip(members, evaluations, strict=True)
    }
    fused = average(list(posteriors.values()))
    rows = error_table({**posteriors, "fusion": fused}, labels)
    names = [e.name.removesuffix("-eval") for e in evaluations]
    config = {
        "members": [m["model"] for m in members],
        "mode": mode,
        "multi_scale": request.multi_scale,
    }
    with lead_run(
        root,
        request.name or "fuse-" + "+".join(names),
        Kind.FUSION,
        config,
        parents=[e.version for e in evaluations],
        device=cpu_label(),
    ) as out:
        save_posteriors(out.writer, EvaluationRun.posteriors_name(mode), fused)
        out.writer.set_result("errors", rows)
    print_errors(f"fusion ({mode})", [{**r, "method": r["name"]} for r in rows])
    return out.version


Identity = tuple[str, tuple[int, ...]]  # (model version, test scales)


def _identity(version: RunVersion, multi_scale: bool) -> Identity | None:
    """Which model at which test scales a member stands for, known before evaluating."""
    kind = kind_of(version)
    if kind == Kind.EVALUATION:
        evaluation = EvaluationRun(version)
        return evaluation.model(), evaluation.scales()
    if kind == Kind.MODEL:
        model = ModelRun(version)
        return model.label, model.default_test_scales(multi_scale)
    return None  # _member says what is wrong with it


def _refuse_repeats(identities: list[Identity | None], mode: Mode) -> None:
    """One model version at one set of test scales counted twice would weigh it double
    (`vgg fuse runs/X runs/X/v001`, or two evaluations of X at the same scales)."""
    seen: set[Identity] = set()
    for identity in identities:
        if identity in seen:
            model, scales = identity
            listed = ",".join(str(q) for q in scales)
            raise VggError(f"{model} ({mode}, Q={listed}) is named twice; fuse distinct models")
        if identity is not None:
            seen.add(identity)


def _verify_model(evaluation: EvaluationRun, root: Path) -> None:
    """The model that made stored posteriors must still be the model its run recorded:
    posteriors of a since-damaged (or vanished) model are not fused. Hashes only, no torch.
    The model is the evaluation's first parent, found by label under the root or by its
    recorded path."""
    model = parent(evaluation.version, 0, root)
    if not (model.path / MANIFEST).is_file():
        raise WorkFailed(
            f"{evaluation.label}: its model {evaluation.model()} is gone, so its posteriors "
            "cannot be checked (--no-verify fuses them anyway)"
        )
    ModelRun(model).weights()


def _member(version: RunVersion, root: Path, mode: Mode, request: FuseRequest) -> EvaluationRun:
    """An evaluation run holding `mode`'s posteriors for what the user named."""
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
    flip = model.flips() if request.flip is None else request.flip
    found = find_evaluation(model, root, mode, scales, flip)
    if found is not None:
        return found
    if model.imported():
        raise VggError(
            f"{model.label} was imported and has no '{mode}' evaluation to fuse: evaluate it "
            f"on the members' dataset first (vgg evaluate {model.name} --data DATASET), then "
            "fuse its evaluation run"
        )
    from vggcli.stages import evaluate  # torch and FFCV, only when a member needs them

    console.print(f"no {mode} posteriors for {model.label}: evaluating it first")
    evaluated = evaluate.run(
        evaluate.EvaluateRequest(
            str(model.path),
            mode,
            request.multi_scale,
            precision=request.precision,
            device=request.device,
            flip=flip,
        ),
        root,
    )
    return as_kind(evaluated, EvaluationRun)
