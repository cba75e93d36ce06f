"""The train stage: `vgg train` (a net from scratch or from A's layers) and `--resume`.

It names the dataset, the parents and the run to write, builds the model with the
dataset's mean inside it, runs the training loop against a checkpoint store and a metrics
log kept in the run version, and writes model.pt. `vgg finetune-scale` (stages/finetune.py)
goes through `execute` too, so `runs/D` always names the most advanced stage of net D.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vggcli import checkpoints, decode_choice, device, distributed
from vggcli.artifacts import DatasetRun, Kind, ModelRun, as_kind, latest_of_kind, resolve_as
from vggcli.config import (
    AUTO_DECODE,
    DECODES,
    NetSpec,
    Recipe,
    Runtime,
    TrainConfig,
    check_decode,
    default_workers,
)
from vggcli.distributed import Cluster
from vggcli.errors import VggError
from vggcli.models import VGG, check_takes_a_layers, count_parameters
from vggcli.processes import pause_point, sigterm_requests_stop
from vggcli.progress import console
from vggcli.runs import FAILED, INTERRUPTED, RUNNING, RunVersion, locate, versions
from vggcli.stages.common import lead_run, read_on_every_rank
from vggcli.train import TrainData, Trainer, build_model, results

if TYPE_CHECKING:
    import torch

# Nets the paper trains from random init: A ("shallow enough"), A-LRN (A's sibling), and the
# shallow 5x5 variant of B (8 weight layers, fewer than A's 11; Sect. 4.1).
RANDOM_INIT = ("A", "A-LRN", "B-5x5")

__all__ = ["NetSpec", "Recipe", "ResumeRequest", "Runtime", "TrainRequest", "plan", "resume", "run"]


@dataclass(frozen=True)
class TrainRequest:
    """`vgg train`: what the user asked for, before the runs it names are resolved."""

    net: NetSpec
    s_min: int
    s_max: int
    recipe: Recipe
    runtime: Runtime
    precision: str = "auto"
    compile: bool | None = None  # None: on CUDA, off on CPUs (device.compile_for)
    name: str | None = None  # default: the net letter
    data: str | None = None  # default: the only dataset run
    init_from: str | None = None  # a trained net-A run
    paper_init: bool = False  # no --init: B-E from the one matching A run, else Glorot (not B-5x5)
    decode: str = AUTO_DECODE  # who decodes the training images: ffcv, torch, gpu or auto


@dataclass(frozen=True)
class ResumeRequest:
    """`vgg train --resume runs/D/v003`: finish an interrupted version with its own config."""

    version: str
    runtime: Runtime


def find_dataset(root: Path, data: str | None) -> DatasetRun:
    """The dataset run named, else the only one under the runs root."""
    if data is not None:
        return resolve_as(data, root, DatasetRun, field="data")
    found = latest_of_kind(root, DatasetRun)
    if not found:
        raise VggError(f"no complete dataset run under {root}: run `vgg preprocess DIR` first")
    if len(found) > 1:
        names = ", ".join(str(d.path.parent) for d in found)
        raise VggError(f"several dataset runs ({names}): pick one with --data")
    return found[0]


def execute(
    config: TrainConfig, root: Path, name: str, runtime: Runtime, resume_only: Path | None = None
) -> RunVersion:
    """Run (or resume) a training config, in this process or in every process of a torchrun
    job; only rank 0 writes the run. Its dataset and parents are named in the config.
    `resume_only` (a version's path): finish exactly that version or fail, never start
    a new one."""
    with (
        distributed.joined(runtime.device) as (cluster, chosen),
        sigterm_requests_stop() as stop_requested,
    ):
        runtime = replace(runtime, workers=runtime.workers or default_workers(chosen.type))
        # rank 0 alone looks at the run directory, so every rank trains with its answer
        config = cluster.broadcast(_unfinished(config, root, name) if cluster.lead else None)
        summary, path = _train(
            config, root, name, runtime, cluster, chosen, stop_requested, resume_only
        )
    if summary["val_top1_err"] is not None:
        console.print(
            f"val top-1 error {summary['val_top1_err']:.2%}, top-5 "
            f"{summary['val_top5_err']:.2%} at Q={config.val_scale}"
        )
    return RunVersion(Path(path))


def _train(
    config: TrainConfig,
    root: Path,
    name: str,
    runtime: Runtime,
    cluster: Cluster,
    chosen: torch.device,
    stop_requested: Callable[[], bool],
    resume_only: Path | None,
) -> tuple[dict[str, Any], str]:
    """The training summary and the run's path. The model and its DDP wrapper live in this
    frame only, so they are gone before the process group they use is destroyed."""
    dataset = resolve_as(config.dataset, root, DatasetRun)
    _refuse_no_steps(config, dataset)
    check_decode(config.decode, str(chosen))  # gpu on a CPU run: refused before a version opens

    def read() -> tuple[VGG, list[RunVersion], TrainData]:
        betons = dataset.beton("train"), dataset.beton("val")
        return (*_model(config, root, dataset), TrainData(*betons, dataset.colour_statistics()))

    model, parents, data = read_on_every_rank(cluster, chosen, read)
    pilot = None
    if config.decode == AUTO_DECODE:
        config, pilot = _decode_chosen(config, data, model, chosen, runtime, cluster)
    label = device.label(chosen)
    with lead_run(
        root, name, Kind.MODEL, config.as_manifest(), parents=parents, device=label,
        cluster=cluster, resume_only=resume_only,
    ) as out:
        writer = out.writer
        store = checkpoints.LeadCheckpoints(cluster, writer)
        metrics = checkpoints.RunMetrics(writer) if writer else checkpoints.NO_METRICS
        trainer = Trainer(
            config, data, model, runtime, chosen, store, metrics, cluster, stop_requested
        )
        try:
            trainer.fit()
        finally:
            trainer.release()
        summary = results(trainer)
        if writer is not None:
            extra = {"stage": config.stage, "s_min": config.s_min, "s_max": config.s_max}
            payload = checkpoints.model_payload(trainer.model, extra)
            checkpoints.save(writer, checkpoints.MODEL_FILE, payload)
            metrics.record()
            store.clear()
            writer.set_result("training", summary)
            if pilot is not None:
                writer.set_result("decode_pilot", asdict(pilot) | {"decode": pilot.decode})
    return summary, str(out.version.path)


def _decode_chosen(
    config: TrainConfig,
    data: TrainData,
    model: VGG,
    chosen: torch.device,
    runtime: Runtime,
    cluster: Cluster,
) -> tuple[TrainConfig, decode_choice.Pilot | None]:
    """--decode auto: FFCV's workers on a CPU; on CUDA, rank 0's pilot decides for all."""
    if chosen.type != "cuda":
        return decode_choice.chosen(config, None), None
    pilot = None
    if cluster.lead:
        pilot = decode_choice.measure(config, data, model, chosen, runtime.workers,
                                      cluster.world_size)
        console.print(pilot.describe())
    pilot = cluster.broadcast(pilot)
    return decode_choice.chosen(config, pilot), pilot


def _refuse_no_steps(config: TrainConfig, dataset: DatasetRun) -> None:
    """A run that would make no optimizer step would still end `complete`, with its
    initial weights as its model: refuse it before a version is made."""
    images = int(dataset.results()["counts"]["train"])
    batch = config.recipe.batch_size
    if images < batch:
        raise VggError(
            f"{dataset.label} has {images} training images, fewer than one batch of {batch}: "
            "no optimizer step would be made",
            field="batch_size",
        )


def _model(config: TrainConfig, root: Path, dataset: DatasetRun) -> tuple[VGG, list[RunVersion]]:
    """Fresh (paper init), from A's layers, or a parent's weights; the dataset's mean inside.
    Every rank builds the same model (the seed fixes it; DDP checks with rank 0's)."""
    parents: list[RunVersion] = [dataset.version]
    a_payload = start = None
    imported_a = False
    if config.init_from is not None:
        a_run = resolve_as(config.init_from, root, ModelRun)
        a_payload = checkpoints.payload_for(a_run, dataset, root)
        imported_a = a_run.imported()
        parents.append(a_run.version)
    if config.finetune_from is not None:
        parent = resolve_as(config.finetune_from, root, ModelRun)
        start = checkpoints.payload_for(parent, dataset, root)
        parents.insert(0, parent.version)
    model = build_model(config, start, a_payload)
    if a_payload is not None and imported_a:  # A's layers expect A's input normalisation
        state = a_payload["state_dict"]
        model.set_normalisation(state["mean"].tolist(), state["std"].tolist())
    elif start is None:  # a fine-tune keeps its parent's, which its weights expect
        model.set_normalisation(dataset.mean_rgb())
    return model, parents


def initialisation(
    request: TrainRequest, root: Path, dataset: DatasetRun, net: NetSpec
) -> tuple[Recipe, str | None, str]:
    """The recipe, the A run to copy layers from, and what was chosen, in words. Without
    --init or --init-from, the paper's way (Sect. 2.3): a deeper net starts from the one
    trained net A of the same width, crop and dataset under the runs root; with none, from
    Glorot init (the paper's post-submission note: it trains deep nets without A). A, A-LRN
    and B-5x5 (shallower than A, no conv shaped like A's) start from random init like A."""
    recipe = request.recipe
    if recipe.inserted_init != "random" and request.init_from is None and not request.paper_init:
        raise VggError(
            f"--inserted-init {recipe.inserted_init} sets the layers a net does not copy from "
            "net A: it needs --init-from (or no --init, for the one trained A)"
        )
    if request.init_from is not None:
        check_takes_a_layers(net.net)
        a_run = resolve_as(request.init_from, root, ModelRun, field="init_from")
        return recipe, a_run.label, f"first layers from {a_run.label}"
    if not request.paper_init or net.net in RANDOM_INIT:
        return _no_inserted(recipe), None, f"{recipe.init} random init"
    found = [
        a_run
        for a_run in latest_of_kind(root, ModelRun)
        if a_run.net() == "A" and a_run.dataset() == dataset.label
        and a_run.width() == net.width and a_run.crop() == net.crop
    ]
    if len(found) > 1:
        names = ", ".join(a_run.label for a_run in found)
        raise VggError(f"several trained net-A runs could initialise {net.net} ({names}): "
                       "pick one with --init-from, or --init for random init")
    if found:
        return recipe, found[0].label, (
            f"first layers from {found[0].label} (the paper's init for deeper nets; "
            "--init normal for the random init)")
    return replace(_no_inserted(recipe), init="glorot"), None, (
        "glorot random init: no trained net A of this width, crop and dataset under the runs "
        "root (the paper initialises deeper nets from A; train A first, or --init-from)")


def _no_inserted(recipe: Recipe) -> Recipe:
    """A net that copies nothing from A has no inserted layers: their init is not recorded
    (the smoke pipeline's shared options may name one for A, A-LRN and B-5x5 too)."""
    return replace(recipe, inserted_init="random")


def run(request: TrainRequest, root: Path) -> RunVersion:
    """`vgg train`: a net from scratch (or from A's layers), run named after the net."""
    dataset = find_dataset(root, request.data)
    net = replace(request.net, num_classes=dataset.num_classes())
    recipe, a_label, chosen = initialisation(request, root, dataset, net)
    picked = device.pick(request.runtime.device)
    config = TrainConfig(
        net,
        request.s_min,
        request.s_max,
        recipe,
        device.precision_for(picked, request.precision),
        device.compile_for(picked, request.compile),
        dataset.label,
        a_label,
        decode=request.decode,
    )
    if request.paper_init and distributed.from_environment().lead:
        console.print(f"init: {chosen}")  # chosen for the user: say what
    return execute(config, root, request.name or net.net, request.runtime)


def _unfinished(config: TrainConfig, root: Path, name: str) -> TrainConfig:
    """An unfinished version that is this very config but for what the request leaves
    open resumes as it was recorded: started under an older augmentation scheme (scheme 1
    records no `augmentation`), or, under --decode auto, with the path its pilot chose (a
    second pilot could choose the other and start the run over)."""
    existing = versions(root / name)
    if not existing or existing[-1].status() not in (INTERRUPTED, FAILED):
        return config
    recorded = existing[-1].manifest().get("config")
    decodes = DECODES if config.decode == AUTO_DECODE else (config.decode,)
    for scheme in range(config.augmentation, 0, -1):
        for decode in decodes:
            candidate = replace(config, augmentation=scheme, decode=decode)
            if recorded == _as_json(candidate):
                return candidate
    return config


def _as_json(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config.as_manifest()))


def plan(request: TrainRequest, root: Path, world_size: int) -> list[tuple[str, str]]:
    """What `run(request)` would do with `world_size` processes, without doing it."""
    import torch

    dataset = find_dataset(root, request.data)
    net = replace(request.net, num_classes=dataset.num_classes())
    recipe = request.recipe
    accumulation = recipe.accumulation(world_size)
    images = int(dataset.results()["counts"]["train"])
    _, _, chosen = initialisation(request, root, dataset, net)
    steps = images // recipe.batch_size
    total = recipe.epochs * steps
    if recipe.max_steps:
        total = min(total, recipe.max_steps)
    with torch.device("meta"):
        parameters = count_parameters(VGG(net))
    weights = 4 * parameters  # fp32
    checkpoint = 2 * weights  # weights and SGD momentum
    return [
        ("dataset", f"{dataset.label}: {images:,} training images, {net.num_classes} classes"),
        ("net", f"{net.net}, width {net.width}, crop {net.crop}: {parameters:,} parameters"),
        ("init", chosen),
        (
            "images per epoch",
            f"{steps * recipe.batch_size:,} ({steps:,} steps of {recipe.batch_size})",
        ),
        ("optimizer steps", f"{total:,} over {recipe.epochs} epochs"),
        ("images in all", f"{total * recipe.batch_size:,}"),
        ("processes", f"{world_size} (torchrun when more than 1)"),
        (
            "per process",
            f"{recipe.batch_size // world_size} images per step in {accumulation} pass(es) "
            f"of {recipe.micro(world_size)}",
        ),
        *_speed_choices(request),
        ("checkpoint size", f"{_bytes(checkpoint)} (weights and momentum)"),
        (
            "disk needed",
            f"{_bytes(weights + 2 * checkpoint)} (model.pt, and two checkpoints while "
            "one replaces the other)",
        ),
    ]


def _speed_choices(request: TrainRequest) -> list[tuple[str, str]]:
    """What the run will choose for itself on this machine's device: compile and decode."""
    picked = device.pick(request.runtime.device)
    compiled = device.compile_for(picked, request.compile)
    why = "given" if request.compile is not None else f"the default on {picked.type}"
    if request.decode != AUTO_DECODE:
        decode = f"{request.decode} (given)"
    elif picked.type == "cuda":
        decode = "auto: a pilot before the run measures the host's decode against the model"
    else:
        decode = "ffcv (auto, on a CPU)"
    return [("torch.compile", f"{'on' if compiled else 'off'} ({why})"), ("decode", decode)]


def _bytes(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def resume(request: ResumeRequest, root: Path) -> RunVersion:
    """Finish an interrupted or failed version with the config it recorded."""
    ref = request.version
    path = locate(ref, root)
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
    config = as_kind(version, ModelRun).train_config()
    pause_point("resume-checked")  # tests hold a resume here to race another writer
    return execute(config, root, version.name, request.runtime, resume_only=version.path)
