"""The training loop (Sect. 3.1): SGD with momentum, batch 256, weight decay, dropout,
lr divided by 10 when validation accuracy stops improving, checkpoints that resume exactly.

No paths, runs or CLI here: the train stage resolves the runs, builds the config and hands
the loop its inputs, a checkpoint store and a metrics log.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from vggcli.config import NetSpec, Recipe, Runtime, TrainConfig
from vggcli.data.beton import check_decodes
from vggcli.data.loader import ColourShift, colour_alphas, make_loader
from vggcli.data.sampling import LoaderSpec, mix64
from vggcli.device import autocast as device_autocast
from vggcli.distributed import SINGLE, Cluster
from vggcli.errors import PREEMPTED, VggError, WorkFailed
from vggcli.metrics import counts_correct
from vggcli.models import (
    A_CONVS,
    PAPER_A_CONVS,
    VGG,
    identity_init,
    init_from_a,
    initialise,
    with_normalisation,
)
from vggcli.progress import console, progress_bar


class PlateauSchedule:
    """lr /= 10 when validation top-1 accuracy has not improved for `patience` epochs, at
    most `max_drops` times (the paper's "decreased by a factor of 10 when the validation set
    accuracy stopped improving", three times in all). With `stop_on_plateau`, a plateau after
    the last drop ends training (the paper's "learning was stopped"): the rule, not the
    epoch budget, then sets the length, and the budget is a cap."""

    def __init__(
        self,
        lr: float,
        patience: int,
        max_drops: int,
        drop_after: int | None = None,
        stop_on_plateau: bool = False,
    ) -> None:
        self.lr, self.patience, self.max_drops = lr, patience, max_drops
        self.drop_after = drop_after  # an epoch after which the lr drops whatever val says
        self.stop_on_plateau = stop_on_plateau
        self.best, self.bad_epochs, self.drops = -math.inf, 0, 0
        self.stopped = False

    def step(self, accuracy: float, epoch: int = 0) -> bool:
        """Record epoch `epoch`'s accuracy (epochs count from 1); True if the learning rate
        was just divided."""
        improved = accuracy > self.best
        if improved:
            self.best, self.bad_epochs = accuracy, 0
        else:
            self.bad_epochs += 1
        plateau = self.bad_epochs >= self.patience
        if (plateau or epoch == self.drop_after) and self.drops < self.max_drops:
            self.lr, self.bad_epochs, self.drops = self.lr / 10, 0, self.drops + 1
            return True
        self.stopped = plateau and self.stop_on_plateau
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "drops": self.drops,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best = state["lr"], state["best"]
        self.bad_epochs, self.drops = state["bad_epochs"], state["drops"]
        self.stopped = state.get("stopped", False)  # checkpoints from before the stop rule


@dataclass(frozen=True)
class TrainData:
    """What the loop reads: the two betons and the training set's colour statistics."""

    train_beton: Path
    val_beton: Path
    colour_statistics: dict[str, Any]


class CheckpointStore(Protocol):
    """Where the loop keeps its state; the stage backs it with the run version."""

    def save(self, state: dict[str, Any]) -> None: ...

    def latest(self) -> dict[str, Any] | None: ...


class MetricsLog(Protocol):
    """One JSON row per step and per epoch; cut back to a line count when resuming."""

    def truncate(self, lines: int) -> None: ...

    def append(self, row: dict[str, Any]) -> None: ...


def build_model(
    config: TrainConfig, start: dict[str, Any] | None, a_run: dict[str, Any] | None
) -> VGG:
    """Fresh weights (paper init), or A's first layers copied in, or a parent's weights."""
    torch.manual_seed(config.recipe.seed)
    model = VGG(config.net)
    recipe = config.recipe
    initialise(model, recipe.init, recipe.init_std, recipe.last_std)
    if a_run is not None:
        whole = recipe.inserted_init == "net2deeper"  # all of A, so the net starts as A
        convs = A_CONVS if whole else PAPER_A_CONVS
        copied = init_from_a(model, a_run["state_dict"], NetSpec(**a_run["spec"]), convs)
        if recipe.inserted_init != "random":
            identity_init(model, copied)
    if start is not None:
        if NetSpec(**start["spec"]) != config.net:
            raise VggError("the run to fine-tune has a different architecture")
        model.load_state_dict(start["state_dict"])
    return model


def _optimizer(model: VGG, recipe: Recipe, fc_only: bool = False) -> torch.optim.SGD:
    """Weight decay on the conv and FC weights only (Caffe's usual decay_mult 0 for biases).
    `fc_only` (Sect. 4.4: the submitted multi-scale D fine-tuned "only the fully-connected
    layers"): fc6-fc8 alone; the convs are frozen (requires_grad False, so autograd stops at
    fc6 and DDP leaves them out; call this before wrapping the model)."""
    layers = model.fcs() if fc_only else list(model.weight_layers())
    for conv in model.convs():
        conv.requires_grad_(not fc_only)
    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    return torch.optim.SGD(
        [
            {"params": weights, "weight_decay": recipe.weight_decay},
            {"params": biases, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        momentum=recipe.momentum,
    )


@dataclass
class Position:
    """Where training stands: what a checkpoint must restore to continue exactly."""

    epoch: int = 0
    offset: int = 0  # samples of this epoch already trained on
    step: int = 0  # optimizer steps so far
    metrics_lines: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # epoch rows


class Preempted(VggError):
    """SIGTERM arrived (Slurm preemption, scancel): a checkpoint was written, every rank
    stopped; re-running the command (a requeued job) resumes. Exit code 75 (EX_TEMPFAIL)."""

    def __init__(self) -> None:
        super().__init__(
            "stopped by SIGTERM after writing a checkpoint; re-run the command to resume",
            exit_code=PREEMPTED,
        )


T = TypeVar("T")


class InputWait:
    """Seconds the loop spent waiting for the loader to hand over the next batch: the input
    stall. Each step's share of it goes into its metrics row (`input_wait_s` of `step_s`).
    The micro-batch before read its logits back after its backward pass (in stream order),
    so this is time the device sat idle, but for an optimizer update still in flight."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timing(self, batches: Iterable[T]) -> Iterator[T]:
        iterator = iter(batches)
        while True:
            asked = time.monotonic()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.seconds += time.monotonic() - asked
            yield batch

    def take(self) -> float:
        """The wait since the last take."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _seed_for(*parts: int) -> int:
    """A torch seed from integers (dropout masks of one step on one rank)."""
    key = np.uint64(0)
    for part in parts:
        key = mix64(key ^ np.uint64(part & 0xFFFFFFFFFFFFFFFF))
    return int(key >> np.uint64(1))


class Trainer:
    """The loop. With several processes (`cluster`), each trains on its slice of every
    global batch, gradients are averaged by DistributedDataParallel, validation counts and
    the stop decision are summed over ranks, and only rank 0's stores write anything."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainData,
        model: VGG,
        runtime: Runtime,
        device: torch.device,
        checkpoints: CheckpointStore,
        metrics: MetricsLog,
        cluster: Cluster = SINGLE,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config, self.runtime, self.device = config, runtime, device
        self.checkpoints, self.metrics, self.cluster = checkpoints, metrics, cluster
        self.stop_requested = stop_requested
        self.recipe = config.recipe
        if cluster.distributed and config.augmentation == 1:
            raise VggError(
                "this run was started before distributed training (augmentation scheme 1); "
                "resume it with one process"
            )
        self.accumulation = self.recipe.accumulation(cluster.world_size)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.optimizer = _optimizer(self.model, self.recipe, config.fc_only)  # before DDP
        self.ddp = self._wrap(self.model) if cluster.distributed else None
        wrapped = self.ddp or self.model
        self.forward = torch.compile(wrapped) if config.compile else wrapped
        recipe = self.recipe
        self.schedule = PlateauSchedule(
            recipe.lr,
            recipe.plateau_patience,
            recipe.max_lr_drops,
            recipe.epochs - recipe.final_drop if recipe.final_drop else None,
            recipe.plateau_stop,
        )
        self.position = Position()
        self.augment = ColourShift(data.colour_statistics, self.recipe.colour_sigma, self.device)
        self.train_loader, self.train_order = self._loader(
            data.train_beton, True, config.s_min, config.s_max
        )
        self.val_loader, self.val_order = self._loader(
            data.val_beton, False, config.val_scale, config.val_scale
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def release(self) -> None:
        """Drop the DDP wrapper (even when training failed), so nothing uses the process
        group after it is destroyed."""
        self.ddp, self.forward = None, self.model

    def _wrap(self, model: VGG) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model,
            device_ids=ids,
            gradient_as_bucket_view=True,
            static_graph=self.accumulation == 1,  # no_sync() steps vary the graph's use
            broadcast_buffers=False,  # the only buffers, mean and std, never change
        )

    def _loader(self, beton: Path, train: bool, s_min: int, s_max: int) -> tuple:
        """Training: random crops at S in [s_min, s_max]; validation: centre crop at Q."""
        spec = LoaderSpec(
            beton,
            self.recipe.micro(self.cluster.world_size),
            self.config.net.crop,
            s_min,
            s_max,
            self.recipe.seed,
            train=train,
            workers=self.runtime.workers,
            global_batch=self.recipe.batch_size,
            rank=self.cluster.rank,
            world_size=self.cluster.world_size,
            scheme=self.config.augmentation,
            device=str(self.device),
            flip=self.recipe.flip,
            # validation stays FFCV's whole-image decode whatever the training path: the
            # pixels `vgg evaluate --mode centre` reproduces, so the plateau rule never
            # depends on --decode (and the validation set is small)
            decode=self.config.decode if train else "ffcv",
        )
        return make_loader(spec)

    # -- state ------------------------------------------------------------------------
    def autocast(self) -> torch.autocast:
        return device_autocast(self.device, self.config.precision)

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly, whatever the world size then; rank 0's
        store writes it, the others' only wait for it."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "position": asdict(self.position),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        self.checkpoints.save(state)
        self.last_checkpoint = time.monotonic()

    def restore(self) -> None:
        """Continue from the latest checkpoint if there is one (a resumed run); the metrics
        log is cut back to the rows that checkpoint had written."""
        state = self.checkpoints.latest()
        if state is None:
            self.metrics.truncate(0)
            return
        self.model.load_state_dict(
            with_normalisation(state["model"], self.model.mean, self.model.std)
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.position = Position(**state["position"])
        if self.config.augmentation == 1:  # later schemes reseed dropout every step instead
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.metrics.truncate(self.position.metrics_lines)
        console.print(f"resuming at epoch {self.position.epoch + 1}, step {self.position.step}")

    def log(self, row: dict[str, Any]) -> None:
        self.metrics.append(row)
        self.position.metrics_lines += 1

    # -- loop -------------------------------------------------------------------------
    def fit(self) -> None:
        self.restore()
        self.last_checkpoint = time.monotonic()
        started = time.monotonic()
        while (
            self.position.epoch < self.recipe.epochs
            and not self._out_of_steps()
            and not self.schedule.stopped
        ):
            if not self._train_epoch(started):
                break  # max_steps reached inside the epoch
            self._end_epoch(started)

    def _out_of_steps(self) -> bool:
        return bool(self.recipe.max_steps) and self.position.step >= self.recipe.max_steps

    def _train_epoch(self, started: float) -> bool:
        """Train on the rest of the current epoch; False if max_steps stopped it early."""
        pos, recipe, accumulation = self.position, self.recipe, self.accumulation
        global_remaining = self.train_order.start(pos.epoch, pos.offset) * self.cluster.world_size
        samples = self.train_order.current
        epoch_length = pos.offset + global_remaining
        micro = recipe.micro(self.cluster.world_size)
        self.model.train()
        totals, tick = [0.0, 0.0, 0.0, 0.0], time.monotonic()  # loss, top-1, top-5, seen
        waited = InputWait()
        with progress_bar(status=True) as bar:
            task = bar.add_task(
                f"epoch {pos.epoch + 1}/{recipe.epochs}", total=global_remaining, status=""
            )
            for micro_step, (images, labels) in enumerate(waited.timing(self.train_loader)):
                within = micro_step % accumulation
                if within == 0 and self.config.augmentation >= 2:
                    torch.manual_seed(_seed_for(recipe.seed, pos.step, self.cluster.rank))
                ids = samples[micro_step * micro : (micro_step + 1) * micro]
                first = pos.offset + within * micro  # scheme 1's colour key
                last = within == accumulation - 1
                loss, correct = self._forward_backward(images, labels, ids, first, last)
                totals = [t + v for t, v in zip(totals, (loss, *correct, len(labels)), strict=True)]
                bar.update(task, advance=len(labels) * self.cluster.world_size)
                if not last:
                    continue
                seconds = time.monotonic() - tick
                loss, stop, due = self._step(totals, seconds, waited.take(), started)
                bar.update(task, status=f"loss {loss:.3f}")
                totals, tick = [0.0, 0.0, 0.0, 0.0], time.monotonic()
                if stop:
                    self.save_checkpoint()
                    raise Preempted()
                if self._out_of_steps():
                    return pos.offset == epoch_length
                if due:
                    self.save_checkpoint()
        return True

    def _step(
        self, totals: list[float], seconds: float, waited: float, started: float
    ) -> tuple[float, bool, bool]:
        """The optimizer step that ends a batch, and its metrics row. The batch's loss and
        counts, the SIGTERM flag and the checkpoint clock are summed over ranks in one
        collective, so every rank takes the same decisions. Returns (loss, stop, checkpoint)."""
        loss_sum, top1, top5, seen, stop, due, failed = self.cluster.sum(
            [
                *totals,
                float(self.stop_requested()),
                float(self._checkpoint_due()),
                float(self.train_order.failed_decodes()),
            ],
            self.device,
        )
        check_decodes(int(failed), self.train_order.num_samples, "training")  # fails early
        self._refuse_divergence(loss_sum / self.cluster.world_size)
        lr = self.schedule.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        pos = self.position
        pos.step += 1
        pos.offset += self.recipe.batch_size
        loss = loss_sum / self.cluster.world_size
        self.log(
            {
                "kind": "step",
                "epoch": pos.epoch + 1,
                "step": pos.step,
                "loss": loss,
                "lr": lr,
                "train_top1_err": 1 - top1 / seen,
                "train_top5_err": 1 - top5 / seen,
                "img_per_s": seen / max(seconds, 1e-9),
                "step_s": seconds,
                "input_wait_s": waited,
                "wall_s": time.monotonic() - started,
            }
        )
        return loss, bool(stop), bool(due)

    def _refuse_divergence(self, loss: float) -> None:
        """A NaN or infinite loss or gradient stops training before the update lands, so
        every checkpoint kept holds finite weights. Gradients are already averaged over
        ranks here, and the loss summed: every rank decides the same."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise WorkFailed(
                f"training diverged: the loss is {loss:.4g} and the gradient norm {norm:.4g} "
                f"at step {self.position.step + 1} (epoch {self.position.epoch + 1}); the "
                "version is marked failed, its last checkpoint kept (a lower --lr may help)"
            )

    def _forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, ids: Any, first: int, last: bool
    ) -> tuple[float, tuple[int, int]]:
        """One micro-batch; gradients are averaged over ranks only on the last of a step."""
        alpha = colour_alphas(
            self.config.augmentation, self.recipe.seed, self.position.epoch, ids, first
        )
        x = self.augment(images.to(self.device, non_blocking=True), alpha)
        y = labels.to(self.device, non_blocking=True)
        sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
        with sync:
            with self.autocast():
                logits = self.forward(x)
                loss = self.loss_fn(logits.float(), y) / self.accumulation
            loss.backward()
        counts = counts_correct(logits.detach().float().cpu().numpy(), labels.cpu().numpy())
        return loss.item(), (counts[1], counts[5])

    def _checkpoint_due(self) -> bool:
        """After the step about to be taken: by steps, or by rank 0's clock (the caller sums
        this over ranks, so every rank agrees)."""
        by_steps = self.runtime.checkpoint_steps and (
            (self.position.step + 1) % self.runtime.checkpoint_steps == 0
        )
        elapsed = time.monotonic() - self.last_checkpoint
        by_time = self.cluster.lead and elapsed > 60 * self.runtime.checkpoint_minutes
        return bool(by_steps or by_time)

    def _end_epoch(self, started: float) -> None:
        pos = self.position
        errors = self.validate()
        lr = self.schedule.lr
        dropped = self.schedule.step(1 - errors["top1_err"], pos.epoch + 1)
        row = {
            "kind": "epoch",
            "epoch": pos.epoch + 1,
            "step": pos.step,
            "lr": lr,
            "val_top1_err": errors["top1_err"],
            "val_top5_err": errors["top5_err"],
            "val_scale": self.config.val_scale,
            "lr_dropped": dropped,
            "wall_s": time.monotonic() - started,
        }
        notes = ["lr / 10"] if dropped else []
        if self.schedule.stopped:
            row["stopped"] = True
            notes.append("validation stopped improving with no lr drop left: training stops")
        self._check_decodes(row)
        self.log(row)
        pos.history.append(row)
        console.print(
            f"epoch {pos.epoch + 1}: val top-1 error {errors['top1_err']:.2%}, "
            f"top-5 {errors['top5_err']:.2%}" + "".join(f"; {n}" for n in notes)
        )
        pos.epoch, pos.offset = pos.epoch + 1, 0
        self.save_checkpoint()

    def _check_decodes(self, row: dict[str, Any]) -> None:
        """Images that failed to decode so far (summed over ranks), in the epoch's row;
        too many fail the run (beton.check_decodes)."""
        train, val = self.cluster.sum(
            [float(self.train_order.failed_decodes()), float(self.val_order.failed_decodes())],
            self.device,
        )
        counts = ((train, self.train_order, "training"), (val, self.val_order, "validation"))
        for count, order, what in counts:
            if count:
                row[f"{what}_decode_failures"] = int(count)
                note = check_decodes(int(count), order.num_samples, what)
                console.print(f"[yellow]warning:[/] {note}")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Single centre crop at Q = S (or the jitter range's middle); each rank counts its
        share of the images, the counts are summed, so every rank decides the same."""
        self.model.eval()
        self.val_order.start(0)
        correct = [0.0, 0.0, 0.0]  # top-1, top-5, images
        for images, labels in self.val_loader:
            with self.autocast():
                logits = self.model(self.augment(images.to(self.device), None))
            batch = counts_correct(logits.float().cpu().numpy(), labels.cpu().numpy())
            correct = [correct[0] + batch[1], correct[1] + batch[5], correct[2] + len(labels)]
        top1, top5, total = self.cluster.sum(correct, self.device)
        return {"top1_err": 1 - top1 / total, "top5_err": 1 - top5 / total}


def results(trainer: Trainer) -> dict[str, Any]:
    """The summary a finished training stores: epochs, steps, final and best val error."""
    history = trainer.position.history
    final = history[-1] if history else {}
    return {
        "epochs": trainer.position.epoch,
        "steps": trainer.position.step,
        "val_top1_err": final.get("val_top1_err"),
        "val_top5_err": final.get("val_top5_err"),
        "best_val_top1_err": min((r["val_top1_err"] for r in history), default=None),
        "val_scale": trainer.config.val_scale,
        "lr_drops": trainer.schedule.drops,
    }
