"""The finetune stage: `vgg finetune-scale`, all layers from a trained run at a new training
scale (Sect. 3.1: S=256 -> 384 -> [256, 512]), written as the next version of the same run
with the previous one as its parent. `fc_only` trains fc6-fc8 alone (Sect. 4.4: the
ILSVRC-submission multi-scale D)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from vggcli import device, distributed
from vggcli.artifacts import DatasetRun, ModelRun, resolve_as
from vggcli.config import SCHEME, Recipe, Runtime, TrainConfig
from vggcli.errors import VggError
from vggcli.runs import RunVersion
from vggcli.stages.train import execute

__all__ = ["FinetuneRequest", "Runtime", "run"]


@dataclass(frozen=True)
class FinetuneRequest:
    source: str  # the trained run to start from
    s_min: int
    s_max: int
    runtime: Runtime
    lr: float | None = None  # default: the chain's base lr / 10 (the paper: 1e-2 -> 1e-3)
    epochs: int | None = None  # default: the parent's
    precision: str = "auto"
    name: str | None = None  # default: the parent's run name
    fc_only: bool = False  # train fc6-fc8 alone, the convs frozen at the parent's weights
    data: str | None = None  # a dataset run; default: the parent's (imported parents: required)
    batch_size: int | None = None  # default: the parent's (imported parents: the paper's 256)
    micro_batch: int | None = None  # default: the parent's
    decode: str | None = None  # who decodes the training images; default: the parent's
    compile: bool | None = None  # None: on CUDA, off on CPUs (device.compile_for)


def base_lr(model: ModelRun, root: Path) -> float:
    """The learning rate the chain of fine-tunes started from: that of the run trained
    from scratch (or from A) at its root, whatever the fine-tunes in between used; the
    paper's for imported weights."""
    while parent := model.finetuned_from():
        model = resolve_as(parent, root, ModelRun)
    return Recipe.lr if model.imported() else model.train_config().recipe.lr


def starting_config(parent: ModelRun, data: str | None, root: Path) -> TrainConfig:
    """The parent's training config, on the dataset named (default: the parent's). An
    imported parent has none: the paper's recipe, on a dataset that must be named."""
    if parent.imported():
        if data is None:
            raise VggError(
                f"{parent.label} was imported and has no dataset of its own: name the "
                "dataset run to fine-tune on with --data"
            )
        net = parent.net_spec()
        previous = TrainConfig(net, net.crop, net.crop)
    else:
        previous = parent.train_config()
    if data is None:
        return previous
    dataset = resolve_as(data, root, DatasetRun, field="data")
    net = replace(previous.net, num_classes=dataset.num_classes())
    return replace(previous, net=net, dataset=dataset.label)


def final_drop(parent_drop: int, parent_epochs: int, epochs: int) -> int:
    """The parent's scheduled final drop, as the same share of the fine-tune's budget (4 of
    20 epochs -> 1 of 4), leaving at least one epoch at the full lr."""
    if not parent_drop:
        return 0
    return min(max(1, round(parent_drop * epochs / parent_epochs)), epochs - 1)


def run(request: FinetuneRequest, root: Path) -> RunVersion:
    parent = resolve_as(request.source, root, ModelRun)
    parent.weights()
    previous = starting_config(parent, request.data, root)
    epochs = request.epochs or previous.recipe.epochs
    recipe = replace(
        previous.recipe,
        lr=request.lr if request.lr is not None else base_lr(parent, root) / 10,
        epochs=epochs,
        max_steps=0,
        final_drop=final_drop(previous.recipe.final_drop, previous.recipe.epochs, epochs),
        inserted_init="random",  # nothing is inserted: every layer starts from the parent
        batch_size=request.batch_size or previous.recipe.batch_size,
        micro_batch=previous.recipe.micro_batch if request.micro_batch is None
        else request.micro_batch,
    )
    recipe.accumulation(distributed.from_environment().world_size)  # before a version opens
    chosen = device.pick(request.runtime.device)
    config = replace(
        previous,
        s_min=request.s_min,
        s_max=request.s_max,
        recipe=recipe,
        init_from=None,
        finetune_from=parent.label,
        augmentation=SCHEME,  # a new run: today's scheme, whatever its parent used
        precision=device.precision_for(chosen, request.precision),
        compile=device.compile_for(chosen, request.compile),  # this device's, not the parent's
        fc_only=request.fc_only,  # not inherited: each fine-tune says which layers it trains
        decode=request.decode or previous.decode,
    )
    return execute(config, root, request.name or parent.name, request.runtime)
