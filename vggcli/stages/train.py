"""The train stage: `vgg train` (a net from scratch or from A's layers) and `--resume`.

It names the dataset, the parents and the run to write, builds the model with the
dataset's mean inside it, runs the training loop against a checkpoint store and a metrics
log kept in the run version, and writes model.pt. `vgg finetune-scale` (stages/finetune.py)
goes through `execute` too, so `runs/D` always names the most advanced stage of net D.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from vggcli import checkpoints, device
from vggcli.artifacts import DatasetRun, Kind, ModelRun, latest_of_kind, resolve_as
from vggcli.errors import VggError
from vggcli.models import NetSpec
from vggcli.progress import console
from vggcli.runs import FAILED, INTERRUPTED, RUNNING, RunVersion, RunWriter, versions
from vggcli.stages.common import announce
from vggcli.train import Recipe, Runtime, TrainConfig, TrainData, Trainer, build_model, results

__all__ = ["NetSpec", "Recipe", "ResumeRequest", "Runtime", "TrainRequest", "resume", "run"]


@dataclass(frozen=True)
class TrainRequest:
    """`vgg train`: what the user asked for, before the runs it names are resolved."""

    net: NetSpec
    s_min: int
    s_max: int
    recipe: Recipe
    runtime: Runtime
    precision: str = "auto"
    compile: bool = False
    name: str | None = None  # default: the net letter
    data: str | None = None  # default: the only dataset run
    init_from: str | None = None  # a trained net-A run


@dataclass(frozen=True)
class ResumeRequest:
    """`vgg train --resume runs/D/v003`: finish an interrupted version with its own config."""

    version: str
    runtime: Runtime


def find_dataset(root: Path, data: str | None) -> DatasetRun:
    """The dataset run named, else the only one under the runs root."""
    if data is not None:
        return resolve_as(data, root, DatasetRun)
    found = latest_of_kind(root, DatasetRun)
    if not found:
        raise VggError(f"no complete dataset run under {root}: run `vgg preprocess DIR` first")
    if len(found) > 1:
        names = ", ".join(str(d.path.parent) for d in found)
        raise VggError(f"several dataset runs ({names}): pick one with --data")
    return found[0]


def execute(config: TrainConfig, root: Path, name: str, runtime: Runtime) -> RunVersion:
    """Run (or resume) a training config; its dataset and parents are named inside it."""
    dataset = resolve_as(config.dataset, root, DatasetRun)
    parents: list[RunVersion] = [dataset.version]
    a_payload = start = None
    if config.init_from is not None:
        a_run = resolve_as(config.init_from, root, ModelRun)
        a_payload = checkpoints.load_payload(a_run.weights())
        parents.append(a_run.version)
    if config.finetune_from is not None:
        parent = resolve_as(config.finetune_from, root, ModelRun)
        start = checkpoints.load_payload(parent.weights())
        parents.insert(0, parent.version)
    model = build_model(config, start, a_payload)
    model.set_normalisation(dataset.mean_rgb())
    chosen = device.pick(runtime.device)
    data = TrainData(dataset.beton("train"), dataset.beton("val"), dataset.colour_statistics())
    with RunWriter.open(
        root,
        name,
        kind=Kind.MODEL,
        config=config.as_manifest(),
        parents=parents,
        device=device.label(chosen),
    ) as writer:
        announce(writer)
        store = checkpoints.RunCheckpoints(writer)
        metrics = checkpoints.RunMetrics(writer)
        trainer = Trainer(config, data, model, runtime, chosen, store, metrics)
        trainer.fit()
        extra = {"stage": config.stage, "s_min": config.s_min, "s_max": config.s_max}
        payload = checkpoints.model_payload(trainer.model, extra)
        checkpoints.save(writer, checkpoints.MODEL_FILE, payload)
        metrics.record()
        store.clear()
        summary = results(trainer)
        writer.set_result("training", summary)
    if summary["val_top1_err"] is not None:
        console.print(
            f"val top-1 error {summary['val_top1_err']:.2%}, top-5 "
            f"{summary['val_top5_err']:.2%} at Q={config.val_scale}"
        )
    return writer.version


def run(request: TrainRequest, root: Path) -> RunVersion:
    """`vgg train`: a net from scratch (or from A's layers), run named after the net."""
    dataset = find_dataset(root, request.data)
    net = replace(request.net, num_classes=dataset.num_classes())
    a_label = None
    if request.init_from is not None:
        a_label = resolve_as(request.init_from, root, ModelRun).label
    config = TrainConfig(
        net,
        request.s_min,
        request.s_max,
        request.recipe,
        device.precision_for(device.pick(request.runtime.device), request.precision),
        request.compile,
        dataset.label,
        a_label,
    )
    return execute(config, root, request.name or net.net, request.runtime)


def resume(request: ResumeRequest, root: Path) -> RunVersion:
    """Finish an interrupted or failed version with the config it recorded."""
    ref = request.version
    path = Path(ref) if Path(ref).exists() else root / ref
    found = [v for v in versions(path.parent) if v.path == path]
    if not found:
        raise VggError(f"--resume needs a run version such as runs/D/v001, not {ref}")
    version = found[0]
    status = version.status()
    if status == RUNNING:
        raise VggError(f"{version.label} is being written by another process")
    if status not in (INTERRUPTED, FAILED):
        raise VggError(
            f"{version.label} is {status}; nothing to resume "
            "(run the command without --resume to train a new version)"
        )
    if versions(path.parent)[-1] != version:
        raise VggError(f"{version.label} is not the latest version of {version.name}")
    config = TrainConfig.from_manifest(version.manifest()["config"])
    return execute(config, root, version.name, request.runtime)
