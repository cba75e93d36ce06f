"""`vgg bench ...`: side-by-side performance measurements, saved as a run."""

from __future__ import annotations

from typing import Annotated

import typer

from vggcli.commands.common import (
    MAX_BATCH,
    MAX_IMAGES,
    MAX_PROCESSES,
    MAX_REPEATS,
    MAX_SCALE,
    Device,
    NoVerify,
    NProc,
    RunsRoot,
    at_least,
    bounded,
    done,
    one_of,
    parse_scale,
    relaunch,
    run_reference,
    runs_root,
    scale_text,
    user_errors,
)
from vggcli.config import CONFIGS
from vggcli.errors import VggError

app = typer.Typer(help="Benchmarks: ours against a reference on the same cores, in one run.",
                  no_args_is_help=True)


@app.command("train")
@user_errors
def train_command(
    batch: Annotated[int, typer.Option(callback=at_least(1, MAX_BATCH), help="Images per SGD step.")] = 8,
    repeats: Annotated[int, typer.Option(callback=at_least(1, MAX_REPEATS), help="Timed steps per model and precision (median taken).")] = 3,
    nproc: NProc = 1,
    width: Annotated[float, typer.Option(callback=bounded(0, 1, open_low=True), help="Width of net D in the --nproc scaling measurement (1 = full size).")] = 1.0,
    compile: Annotated[bool, typer.Option(help="Also time our D under torch.compile beside eager (compiling takes minutes on a CPU).")] = False,
    precision: Annotated[str, typer.Option(callback=one_of("fp32", "bf16", "both"), help="fp32, bf16 (autocast + channels_last) or both (with --nproc: the last).")] = "both",
    device: Device = "auto",
    root: RunsRoot = None,
) -> None:
    """img/s of a training step of full-size net D at 224 (fp32, and bf16 + channels_last) beside torchvision's vgg16 under identical settings, and as a share of a bf16 GEMM's FLOP rate measured in the same run; with --compile, under torch.compile too; with --nproc N, img/s per rank of N DDP processes beside one process alone, and the scaling efficiency."""
    from vggcli.stages import bench as stage

    if compile and nproc > 1:
        raise VggError("--compile times one process against eager; the --nproc scaling measurement runs eager only", field="compile")
    relaunch(nproc)
    precisions = {"both": ("fp32", "bf16"), "fp32": ("fp32",), "bf16": ("bf16",)}
    bench = stage.TrainBench(
        batch=batch,
        repeats=repeats,
        precisions=precisions[precision],
        width=width,
        compile=compile,
        device=device,
    )
    done(stage.train(bench, runs_root(root)).path)


@app.command("evaluate")
@user_errors
def evaluate_command(
    q: Annotated[int, typer.Option("--q", callback=bounded(256, MAX_SCALE - 32), help="Test scale Q (smallest image side); the cost is also measured over Q-32, Q, Q+32.")] = 256,
    repeats: Annotated[int, typer.Option(callback=at_least(1, MAX_REPEATS), help="Timed repetitions (median taken).")] = 2,
    net: Annotated[str, typer.Option(callback=one_of(*CONFIGS), help="Table 1 configuration of the end-to-end measurement (the dense-vs-crop cost is always net D's).")] = "A",
    width: Annotated[float, typer.Option(callback=bounded(0, 1, open_low=True), help="Width of both nets (1 = full size).")] = 1.0,
    images: Annotated[int, typer.Option(callback=bounded(1, 256), help="ImageNet-sized JPEGs (500x375 or 375x500) evaluated densely end to end (batches of up to 16 of one size).")] = 48,
    crop_images: Annotated[int, typer.Option(callback=bounded(1, 64), help="Images evaluated with 50 crops end to end (batches of 4).")] = 12,
    workers: Annotated[int, typer.Option(callback=bounded(0, 16), help="Threads preparing input beside the model (0: in the model's thread, serially).")] = 1,
    root: RunsRoot = None,
) -> None:
    """Per-image cost of dense evaluation against 150-crop evaluation, full-size net D, on a 500x375 image, measured side by side; and img/s of the whole evaluation path (JPEG decode from a .beton, rescale, views, model) against the model alone on the same prepared batches, dense and multi-crop, at Q (net A unless --net)."""
    from vggcli.stages import bench as stage

    bench = stage.EvaluateBench(
        q=q,
        repeats=repeats,
        net=net,
        width=width,
        images=images,
        crop_images=crop_images,
        workers=workers,
    )
    done(stage.evaluate(bench, runs_root(root)).path)


@app.command("loader")
@user_errors
def loader_command(
    data: Annotated[str | None, typer.Option(callback=run_reference, help="A dataset run whose training images to read (default: 1,200 ImageNet-sized JPEGs drawn for the bench).")] = None,
    scale: Annotated[str, typer.Option(callback=scale_text, help="Training scale S: 256, or a range such as 256-512 for scale jitter.")] = "256",
    workers: Annotated[int, typer.Option(callback=bounded(1, 256), help="Our loader's threads = torchvision's worker processes = decode-only threads.")] = 2,
    batch: Annotated[int, typer.Option(callback=at_least(1, MAX_BATCH), help="Images per batch.")] = 64,
    crop: Annotated[int, typer.Option(callback=bounded(16, MAX_SCALE), help="Crop size.")] = 224,
    images: Annotated[int, typer.Option(callback=at_least(1, MAX_IMAGES), help="Training images in the bench's sample (a seeded draw).")] = 1200,
    repeats: Annotated[int, typer.Option(callback=at_least(1, MAX_REPEATS), help="Timed passes per loader (median taken).")] = 3,
    pass_images: Annotated[int, typer.Option(callback=at_least(1, MAX_IMAGES), help="Images per timed pass: the sample is read as often as it takes (an epoch's start then weighs little).")] = 3000,
    no_verify: NoVerify = False,
    root: RunsRoot = None,
) -> None:
    """img/s of our training loader (decode, rescale to S, crop, flip: uint8 batches) beside a torchvision ImageFolder + DataLoader doing the same, the stock FFCV RandomResizedCrop loader, our loader before reduced-scale decoding, our --decode torch path (and gpu where CUDA is present), and JPEG decoding alone (full size and at our decoder's DCT scales), on the same images, cores and batch size."""
    from vggcli.stages import bench as stage

    s_min, s_max = parse_scale(scale)
    bench = stage.LoaderBench(s_min, s_max, workers, batch, crop, images, repeats, pass_images)
    done(stage.loader(bench, data, runs_root(root)).path)


@app.command("preprocess")
@user_errors
def preprocess_command(
    images: Annotated[int, typer.Option(callback=at_least(1, MAX_IMAGES), help="ImageNet-sized JPEGs (500x375, quality 90) drawn for the bench.")] = 240,
    workers: Annotated[int, typer.Option(callback=at_least(1, MAX_PROCESSES), help="Processes in every pass (per-core rates divide by it).")] = 1,
    repeats: Annotated[int, typer.Option(callback=at_least(1, MAX_REPEATS), help="Timed rounds of the three measurements, interleaved (median taken).")] = 3,
    root: RunsRoot = None,
) -> None:
    """img/s of each pass of `vgg preprocess` (the scan: decode, shrink, colour sums; FFCV's write) against a ceiling measured in the same run (decode + shrink + JPEG encode alone, nothing kept), per core, and the projected hours for ILSVRC-2012 on 16 and 64 cores."""
    from vggcli.stages import bench as stage

    bench = stage.PreprocessBench(images=images, workers=workers, repeats=repeats)
    done(stage.preprocess(bench, runs_root(root)).path)
