"""`vgg train` and `vgg finetune-scale`: options -> request -> the train / finetune stage."""

from __future__ import annotations

from typing import Annotated

import typer

from vggcli.commands.common import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_MINUTES,
    MAX_PROCESSES,
    MAX_SCALE,
    MAX_STEPS,
    Device,
    NoVerify,
    NProc,
    Precision,
    RunsRoot,
    at_least,
    bounded,
    done,
    one_of,
    parse_scale,
    print_plan,
    relaunch,
    run_name,
    run_reference,
    runs_root,
    scale_text,
    user_errors,
)
from vggcli.config import AUTO_DECODE, CONFIGS, DECODES, INITS, INSERTED_INITS
from vggcli.errors import VggError

CheckpointMinutes = Annotated[float, typer.Option(callback=bounded(0, MAX_MINUTES, open_low=True), help="Also checkpoint every this many minutes (always at each epoch's end).")]
CheckpointSteps = Annotated[int, typer.Option(callback=at_least(0, MAX_STEPS), help="Also checkpoint every N optimizer steps (0 = off).")]
Name = Annotated[str | None, typer.Option(callback=run_name, help="Run name to write (default: the net letter, e.g. runs/D).")]
# SGD's step is lr x gradient: far above 1 it only diverges, and near 1e300 torch's optimizer
# overflows converting it to float32 (a traceback, not our one-line divergence error)
MAX_LR = 10.0
LoaderWorkers = Annotated[int | None, typer.Option("--workers", callback=at_least(1, MAX_PROCESSES), help="Threads decoding training images (default: the node's cores shared among its ranks; on a CPU, OMP_NUM_THREADS when set).", show_default=False)]
Compile = Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model. Default: on CUDA (D's training step benchmarked 1.36x faster on an H200), off on CPUs (1.01x, for a minute of compiling); recorded in the run's config, and a resume keeps it.", show_default=False)]
DECODE_HELP = "Who decodes the training images: ffcv (FFCV's CPU workers), gpu (nvJPEG on the CUDA device, crops resized there: for GPUs the CPU cannot feed), torch (the same path on the CPU) or auto (ffcv on a CPU; on CUDA, gpu when a pilot of a few seconds finds the host's workers decode fewer images per second than the model trains); validation crops are always FFCV's. torch and gpu resize a little differently (about 1 grey level); the path is recorded in the run's config when not ffcv, and a resume keeps it."


def _runtime(jobs: int | None, checkpoint_minutes: float, checkpoint_steps: int, device: str):
    from vggcli.config import Runtime

    return Runtime(jobs, checkpoint_minutes, checkpoint_steps, device)  # jobs: None = by device


@user_errors
def train_command(
    net: Annotated[str | None, typer.Option(callback=one_of(*CONFIGS), help="Table 1 configuration: A, A-LRN, B, C, D or E; or B-5x5, B with each pair of 3x3 convs one 5x5 conv (Sect. 4.1), initialised like A.", show_default=False)] = None,
    scale: Annotated[str, typer.Option(callback=scale_text, help="Training scale S (smallest image side before the crop), e.g. 256, or a jitter range Smin-Smax, e.g. 256-512.")] = "256",
    data: Annotated[str | None, typer.Option(callback=run_reference, help="Dataset run (default: the only one under the runs root).")] = None,
    name: Name = None,
    init_from: Annotated[str | None, typer.Option(callback=run_reference, help="A trained net-A run: copy its first four conv layers and three FC layers (the paper's init for B-E).")] = None,
    width: Annotated[float, typer.Option(callback=bounded(0, 1, open_low=True), help="Width multiplier on every conv and FC layer (1 = the paper's).")] = 1.0,
    crop: Annotated[int, typer.Option(callback=bounded(32, MAX_SCALE), help="Training crop size, a multiple of 32 (224 = the paper's); fc6 kernel = crop/32.")] = 224,
    epochs: Annotated[int, typer.Option(callback=at_least(1, MAX_EPOCHS), help="Epoch budget (the paper stopped after 74).")] = 74,
    batch_size: Annotated[int, typer.Option(callback=at_least(1, MAX_BATCH), help="Images per SGD step (the paper's 256).")] = 256,
    micro_batch: Annotated[int, typer.Option(callback=at_least(0, MAX_BATCH), help="Images per forward pass; gradients are accumulated to --batch-size (0 = whole batch).")] = 0,
    lr: Annotated[float, typer.Option(callback=bounded(0, MAX_LR, open_low=True), help="Initial learning rate (the paper's 1e-2), divided by 10 when val accuracy stops improving.")] = 1e-2,
    momentum: Annotated[float, typer.Option(callback=bounded(0, 1, open_high=True), help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(callback=bounded(0, 1), help="L2 weight decay on weights.")] = 5e-4,
    patience: Annotated[int, typer.Option(callback=at_least(1, MAX_EPOCHS), help="Epochs without a better val accuracy before the lr is divided by 10.")] = 2,
    final_drop: Annotated[int, typer.Option(callback=at_least(0, MAX_EPOCHS), help="Divide the lr by 10 once more for the last N epochs (one of the --max-lr-drops, if any are left): a plateau scheduled in advance, for budgets too short for the plateau rule to fire; 0 = the paper's rule alone.")] = 0,
    max_lr_drops: Annotated[int, typer.Option(callback=at_least(0, MAX_EPOCHS), help="How many times the lr may be divided (the paper: 3).")] = 3,
    init: Annotated[str | None, typer.Option(callback=one_of(*INITS), help="normal (N(0, init-std^2), the paper's for net A), glorot or kaiming. Default: A, A-LRN and B-5x5 from normal; B-E from the one trained net A of the same width, crop and dataset (the paper's way), else glorot; saying it (normal too) gives that random init.", show_default=False)] = None,
    inserted_init: Annotated[str, typer.Option(callback=one_of(*INSERTED_INITS), help="How a net started from A (--init-from) starts the convs it does not copy: random (the paper's: A's first four convs and FC layers copied, the rest as --init says), identity (the same copy, the other square convs as Dirac kernels) or net2deeper (all of A's convs copied, the ones A lacks as Dirac kernels: the net starts as A's function; the smoke recipe's).")] = "random",
    init_std: Annotated[float, typer.Option(callback=bounded(0, 10, open_low=True), help="Std of the normal init.")] = 1e-2,
    last_std: Annotated[float | None, typer.Option(callback=bounded(0, 10, open_low=True), help="Std of fc8's normal init, whatever --init says (keeps the first softmax soft).")] = None,
    dropout: Annotated[float, typer.Option(callback=bounded(0, 1, open_high=True), help="Dropout on fc6 and fc7.")] = 0.5,
    input_scale: Annotated[float, typer.Option(callback=bounded(0, 1000, open_low=True), help="Multiply the mean-subtracted 0-255 input by this (1 = the paper's; ~1/64 suits --init kaiming on small data).")] = 1.0,
    plateau_stop: Annotated[bool, typer.Option("--plateau-stop/--no-plateau-stop", help="End training when validation accuracy stops improving after the last of --max-lr-drops (the paper's stop): the plateau rule sets the length and --epochs is a cap. Off: train all --epochs.")] = False,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror half the training crops at random (the paper's); --no-flip for classes that change under mirroring (digits, letters). Evaluation follows the model's setting.")] = True,
    colour_sigma: Annotated[float, typer.Option(callback=bounded(0, 10), help="Std of the AlexNet PCA colour shift (0 = off).")] = 0.1,
    seed: Annotated[int, typer.Option(callback=bounded(0, 2**32 - 1), help="Seeds init, sample order, crops, flips, colour shifts, dropout.")] = 0,
    max_steps: Annotated[int, typer.Option(callback=at_least(0, MAX_STEPS), help="Stop after this many SGD steps (0 = the whole budget).")] = 0,
    precision: Precision = "auto",
    compile: Compile = None,
    decode: Annotated[str, typer.Option(callback=one_of(AUTO_DECODE, *DECODES), help=DECODE_HELP)] = AUTO_DECODE,
    checkpoint_minutes: CheckpointMinutes = 10.0,
    checkpoint_steps: CheckpointSteps = 0,
    device: Device = "auto",
    resume: Annotated[str | None, typer.Option(callback=run_reference, help="Finish an interrupted version, e.g. runs/D/v003, with its recorded config (re-running the same command does this too).")] = None,
    nproc: NProc = 1,
    dry_run: Annotated[bool, typer.Option(help="Print what the run will do (images and steps, world size and per-process batch, compile and decode on this device, checkpoint size, disk needed) and stop.")] = False,
    no_verify: NoVerify = False,
    root: RunsRoot = None,
    jobs: LoaderWorkers = None,
) -> None:
    """Train a net with the paper's recipe (SGD, batch 256, lr 1e-2 /10 on plateau, random crops of images rescaled to smallest side S, flips, PCA colour shift)."""
    from vggcli.stages import train as stage

    runtime = _runtime(jobs, checkpoint_minutes, checkpoint_steps, device)
    if resume is not None:
        relaunch(nproc)
        done(stage.resume(stage.ResumeRequest(resume, runtime), runs_root(root)).path)
        return
    if not net:
        raise VggError("give --net (A, A-LRN, B, B-5x5, C, D or E), or --resume RUN")

    spec = stage.NetSpec(net=net, width=width, crop=crop, dropout=dropout, input_scale=input_scale)
    recipe = stage.Recipe(epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, lr=lr,
                          momentum=momentum, weight_decay=weight_decay, plateau_patience=patience,
                          max_lr_drops=max_lr_drops, init=init or "normal", init_std=init_std,
                          last_std=last_std, colour_sigma=colour_sigma, seed=seed,
                          max_steps=max_steps, flip=flip, inserted_init=inserted_init,
                          final_drop=final_drop, plateau_stop=plateau_stop)
    recipe.accumulation(nproc)
    s_min, s_max = parse_scale(scale)
    request = stage.TrainRequest(spec, s_min, s_max, recipe, runtime, precision, compile, name,
                                 data, init_from, paper_init=init is None, decode=decode)
    if dry_run:
        print_plan("vgg train: the plan", stage.plan(request, runs_root(root), nproc))
        return
    relaunch(nproc)
    done(stage.run(request, runs_root(root)).path)


@user_errors
def finetune_command(
    run: Annotated[str, typer.Argument(callback=run_reference, help="The trained run to start from, e.g. runs/D (its latest complete version) or runs/D/v001.")],
    scale: Annotated[str, typer.Option(callback=scale_text, help="New training scale: 384, or a jitter range such as 256-512.")],
    lr: Annotated[float | None, typer.Option(callback=bounded(0, MAX_LR, open_low=True), help="Initial learning rate (default: the base lr of the run at the chain's root / 10: the paper's 1e-2 -> 1e-3).", show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(callback=at_least(1, MAX_EPOCHS), help="Epoch budget (default: the parent's).")] = None,
    name: Annotated[str | None, typer.Option(callback=run_name, help="Run to write (default: the next version of the same run).")] = None,
    fc_only: Annotated[bool, typer.Option("--fc-only", help="Train only fc6, fc7 and fc8; the conv layers keep the parent's weights (the ILSVRC-submission multi-scale D, Sect. 4.4).")] = False,
    data: Annotated[str | None, typer.Option(callback=run_reference, help="Dataset run to fine-tune on (default: the parent's; needed for imported weights). fc8 keeps the dataset's classes, matched by wnid.")] = None,
    batch_size: Annotated[int | None, typer.Option(callback=at_least(1, MAX_BATCH), help="Images per SGD step (default: the parent's; the paper's 256 for imported weights).", show_default=False)] = None,
    micro_batch: Annotated[int | None, typer.Option(callback=at_least(0, MAX_BATCH), help="Images per forward pass, gradients accumulated to the batch (default: the parent's; 0 = the whole batch).", show_default=False)] = None,
    precision: Precision = "auto",
    decode: Annotated[str | None, typer.Option(callback=one_of(AUTO_DECODE, *DECODES), help=DECODE_HELP + " Default: the parent's.", show_default=False)] = None,
    compile: Compile = None,
    checkpoint_minutes: CheckpointMinutes = 10.0,
    checkpoint_steps: CheckpointSteps = 0,
    device: Device = "auto",
    nproc: NProc = 1,
    no_verify: NoVerify = False,
    root: RunsRoot = None,
    jobs: LoaderWorkers = None,
) -> None:
    """Continue a trained run at another training scale S: S=256 -> 384 -> jitter [256, 512], all layers fine-tuned (--fc-only: fc6-fc8 alone); the new version records its parent."""
    from vggcli.stages import finetune as stage

    s_min, s_max = parse_scale(scale)
    relaunch(nproc)
    runtime = _runtime(jobs, checkpoint_minutes, checkpoint_steps, device)
    request = stage.FinetuneRequest(
        run, s_min, s_max, runtime, lr, epochs, precision, name, fc_only, data, batch_size,
        micro_batch, decode, compile,
    )
    done(stage.run(request, runs_root(root)).path)
