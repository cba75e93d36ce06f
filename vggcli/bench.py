"""Side-by-side benchmarks: ours against a reference, same cores, same inputs, interleaved.

Machines are noisy, so we report ratios measured in one run, alternating which model goes
first, and take medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vggcli.config import NetSpec
from vggcli.data.beton import BetonImages
from vggcli.distributed import Cluster
from vggcli.errors import VggError
from vggcli.eval_settings import EvalSettings, Mode
from vggcli.evaluate import (
    Evaluator,
    Images,
    batch_input,
    crop_views,
    evaluate_method,
    method_batches,
    prepared_ahead,
    rescale,
    to_tensor,
)
from vggcli.models import VGG


@dataclass(frozen=True)
class TrainBench:
    batch: int = 8  # images per step (per process when scaling)
    repeats: int = 3
    size: int = 224
    precisions: tuple[str, ...] = ("fp32", "bf16")
    width: float = 1.0  # of net D in the scaling measurement (the comparison is full size)
    compile: bool = False  # also time our D under torch.compile beside eager
    device: str = "cpu"  # auto, cpu, cuda or cuda:N (each rank its own GPU when scaling)


@dataclass(frozen=True)
class EvaluateBench:
    q: int = 256
    repeats: int = 2
    net: str = "A"  # of the end-to-end measurement (the dense-vs-crop cost is D's)
    width: float = 1.0  # of both nets (1 = full size)
    images: int = 48  # dense end to end (batches of up to 16 of one rescaled size)
    crop_images: int = 12  # multi-crop end to end: three batches of 4 (200 views each)
    workers: int = 1  # input threads beside the model (0: in the model's thread, serially)

    def __post_init__(self) -> None:
        NetSpec(self.net, width=self.width)  # an unknown net or width: one line, before any work
        if self.q - 32 < 224:
            raise VggError(f"Q={self.q}: the scales Q-32, Q, Q+32 must hold a 224 crop", field="q")


def _ours() -> nn.Module:
    return VGG(NetSpec("D"))


def _torchvision() -> nn.Module:
    from torchvision.models import vgg16

    return vgg16()


def _step_time(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool
) -> float:
    start = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def training_flops(model: nn.Module, size: int) -> int:
    """Floating-point operations of one image's training step (forward and backward), as
    torch's own counter sees the model run (about 3x the forward's)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size)).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def gemm_peak(device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of a large bf16 matrix product on `device`: the rate the convolutions of a
    step could reach at best (square: 2048 on a CPU, 8192 on a GPU; median of `repeats`)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for _ in range(repeats + 1):  # the first warms up
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times[1:])


def train_step_throughput(
    bench: TrainBench, device: torch.device, report: Callable[[str], None] = print
) -> dict:
    """img/s of an SGD step (forward, backward, update) of full-size D at 224, ours vs
    torchvision's vgg16, fp32 (contiguous) and bf16 autocast + channels_last; with
    `compile`, ours under torch.compile too. Each as a share of a bf16 GEMM's FLOP rate
    measured in the same run."""
    torch.manual_seed(0)
    peak = gemm_peak(device)
    flops = training_flops(_ours(), bench.size)
    report(f"bf16 GEMM: {peak / 1e12:.2f} TFLOP/s; {flops / 1e9:.1f} GFLOP per training image")
    rows = [
        _precision_row(bench, device, precision, flops, peak, report)
        for precision in bench.precisions
    ]
    return {"gemm_bf16_tflop_s": peak / 1e12, "gflop_per_image": flops / 1e9, "rows": rows}


def step_rates(
    models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, bf16: bool, repeats: int
) -> dict[str, float]:
    """img/s of an SGD step of each model on the same batch: one warm-up step each
    (allocators, kernels, compilation), then `repeats` rounds in rotating order, medians."""
    optimizers = {
        name: torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        for name, model in models.items()
    }
    for name, model in models.items():
        _step_time(model, optimizers[name], x, y, bf16)
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(repeats):
        names = list(models)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            times[name].append(_step_time(models[name], optimizers[name], x, y, bf16))
    return {name: len(x) / statistics.median(t) for name, t in times.items()}


def _precision_row(
    bench: TrainBench,
    device: torch.device,
    precision: str,
    flops: int,
    peak: float,
    report: Callable[[str], None],
) -> dict:
    bf16 = precision == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    x = torch.randn(bench.batch, 3, bench.size, bench.size, device=device)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, 1000, (bench.batch,), device=device)
    models = {"ours": _ours(), "torchvision": _torchvision()}
    for model in models.values():
        model.to(device, memory_format=layout).train()
    if bench.compile:
        models["ours_compiled"] = torch.compile(
            _ours().to(device, memory_format=layout).train()
        )
    rate = step_rates(models, x, y, bf16, bench.repeats)
    row = {
        "precision": "bf16 + channels_last" if bf16 else "fp32",
        "batch": bench.batch,
        "ours_img_s": rate["ours"],
        "reference_img_s": rate["torchvision"],
        "ratio": rate["ours"] / rate["torchvision"],
        "ours_share_of_gemm_peak": rate["ours"] * flops / peak,
    }
    text = (
        f"{row['precision']}: ours {rate['ours']:.2f} img/s, torchvision "
        f"{rate['torchvision']:.2f} img/s, ratio {row['ratio']:.2f}; ours at "
        f"{row['ours_share_of_gemm_peak']:.0%} of the bf16 GEMM rate"
    )
    if bench.compile:
        compiled = rate["ours_compiled"]
        row |= {
            "ours_compiled_img_s": compiled,
            "compiled_vs_eager": compiled / rate["ours"],
            "ours_compiled_share_of_gemm_peak": compiled * flops / peak,
        }
        text += f"; compiled {compiled:.2f} img/s ({row['compiled_vs_eager']:.2f}x eager)"
    report(text)
    return row


def scaling_throughput(
    bench: TrainBench, cluster: Cluster, device: torch.device, report: Callable[[str], None]
) -> dict | None:
    """img/s per rank of a DistributedDataParallel training step of net D, beside one process
    alone with one rank's share of the machine (the same device, threads and batch), measured
    in one run: rank 0 times itself alone while the others wait, then all ranks together.
    Scaling efficiency = total img/s / (ranks x the lone process's). Rank 0 gets the result."""
    from torch.nn.parallel import DistributedDataParallel

    bf16 = bench.precisions[-1] == "bf16"
    layout = torch.channels_last if bf16 else torch.contiguous_format
    torch.manual_seed(0)
    x = torch.randn(bench.batch, 3, bench.size, bench.size, device=device)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, 1000, (bench.batch,), device=device)
    model = VGG(NetSpec("D", width=bench.width)).to(device, memory_format=layout).train()

    def median_img_s(net: nn.Module) -> float:
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        _step_time(net, optimizer, x, y, bf16)  # warm-up: allocators, kernels, DDP buckets
        times = [_step_time(net, optimizer, x, y, bf16) for _ in range(bench.repeats)]
        return bench.batch / statistics.median(times)

    alone = median_img_s(model) if cluster.lead else 0.0
    cluster.barrier()
    ids = [device.index] if device.type == "cuda" else None
    together = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    per_rank = cluster.gather(median_img_s(together))
    if not cluster.lead:
        return None
    total = sum(per_rank)
    row = {
        "precision": "bf16 + channels_last" if bf16 else "fp32",
        "net": f"D, width {bench.width}",
        "batch_per_rank": bench.batch,
        "world_size": cluster.world_size,
        "per_rank_img_s": per_rank,
        "total_img_s": total,
        "one_process_img_s": alone,
        "scaling_efficiency": total / (cluster.world_size * alone),
    }
    report(
        f"{cluster.world_size} ranks: {total:.2f} img/s in all "
        f"({', '.join(f'{r:.2f}' for r in per_rank)} per rank); one process alone "
        f"{alone:.2f} img/s; scaling efficiency {row['scaling_efficiency']:.2f}"
    )
    return row


def evaluation_cost(
    bench: EvaluateBench, precision: str = "bf16", report: Callable[[str], None] = print
) -> dict:
    """Seconds per image of dense evaluation (whole image + mirror) against multi-crop
    (5x5 grid + mirrors = 50 views per scale) for net D, at Q and over three scales
    {Q-32, Q, Q+32}; one run, interleaved, medians."""
    q, repeats = bench.q, bench.repeats
    scales = (q - 32, q, q + 32)
    settings = EvalSettings(Mode.DENSE_CROP, scales, 224, precision)
    evaluator = Evaluator(_random_net("D", bench.width), settings, torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)

    def dense(at: int) -> None:
        evaluator.dense(rescale(image, at)[None])

    def crops(at: int) -> None:
        evaluator.views(crop_views(rescale(image, at), 224), 50)

    dense(q), crops(q)  # warm-up
    times: dict[str, list[float]] = {"dense": [], "crop": [], "dense3": [], "crop3": []}
    for _ in range(repeats):
        for name, run in (
            ("dense", lambda: dense(q)),
            ("crop", lambda: crops(q)),
            ("dense3", lambda: [dense(s) for s in scales]),
            ("crop3", lambda: [crops(s) for s in scales]),
        ):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "q": q,
        "scales": list(scales),
        "precision": precision,
        "dense_s_per_image": median["dense"],
        "crop50_s_per_image": median["crop"],
        "dense_3_scales_s_per_image": median["dense3"],
        "crop150_s_per_image": median["crop3"],
        "ratio_one_scale": median["crop"] / median["dense"],
        "ratio_three_scales": median["crop3"] / median["dense3"],
    }
    report(
        f"Q={q}: dense {median['dense']:.2f} s/image, 50 crops {median['crop']:.2f} s/image "
        f"({result['ratio_one_scale']:.1f}x); Q={scales}: dense {median['dense3']:.2f} s, "
        f"150 crops {median['crop3']:.2f} s ({result['ratio_three_scales']:.1f}x)"
    )
    return result


def _random_net(net: str, width: float) -> VGG:
    """A net with random weights and the usual ImageNet mean, as a trained one would carry."""
    model = VGG(NetSpec(net, width=width))
    model.set_normalisation([123.7, 116.8, 103.9])
    return model


def evaluation_overlap(
    bench: EvaluateBench,
    beton: Path,
    precision: str = "bf16",
    report: Callable[[str], None] = print,
) -> dict:
    """img/s of the whole evaluation path (JPEG decode from `beton`, rescale to Q, views,
    model, posteriors: `evaluate_method`, input prepared by `bench.workers` threads) beside
    the model alone on the same batches already decoded and converted, dense and multi-crop,
    at Q, and the input path alone; one run, interleaved, medians: what the input costs
    evaluation, and how fast it could feed a faster model."""
    settings = EvalSettings(Mode.DENSE_CROP, (bench.q,), 224, precision)
    model = _random_net(bench.net, bench.width)
    evaluator = Evaluator(model, settings, torch.device("cpu"), bench.workers)
    stored = BetonImages(beton)
    rows = [
        _overlap_row(evaluator, _First(stored, count), method, bench, report)
        for method, count in ((Mode.DENSE, bench.images), (Mode.CROP, bench.crop_images))
    ]
    used = range(max(bench.images, bench.crop_images))
    jpeg_bytes = np.mean([len(stored.encoded(i)) for i in used])
    return {
        "net": bench.net,
        "width": bench.width,
        "q": bench.q,
        "precision": precision,
        "workers": bench.workers,
        "threads": torch.get_num_threads(),
        "jpeg_kb_per_image": float(jpeg_bytes) / 1000,
        "rows": rows,
    }


def _overlap_row(
    evaluator: Evaluator,
    images: Images,
    method: Mode,
    bench: EvaluateBench,
    report: Callable[[str], None],
) -> dict:
    """End to end against model only for one method, and the input path alone (decode to
    tensors: the rate a faster model could be fed at); each batch shape warmed up first
    (oneDNN builds its kernels for a shape on first use)."""
    q, settings = bench.q, evaluator.settings
    batches = method_batches(images.shapes, method, q, settings.batch)
    prepare = batch_input(images, method, q, settings)
    tensors = [to_tensor(prepare(indices), evaluator.device) for indices in batches]
    for x in {x.shape: x for x in tensors}.values():
        evaluator.compute(method, x)

    def input_only() -> None:
        for _, views in prepared_ahead(batches, prepare, evaluator.workers):
            to_tensor(views, evaluator.device)

    runs = {
        "end_to_end": lambda: evaluate_method(evaluator, images, method, q, lambda n: None),
        "model_only": lambda: [evaluator.compute(method, x) for x in tensors],
        "input_only": input_only,
    }
    rate = {name: len(images) / s for name, s in _interleaved(runs, bench.repeats).items()}
    row = {
        "method": str(method),
        "images": len(images),
        "batches": len(batches),
        **{f"{name}_img_s": value for name, value in rate.items()},
        "ratio": rate["end_to_end"] / rate["model_only"],
    }
    report(
        f"{method} Q={q}, net {bench.net}, {bench.workers} input thread(s): end to end "
        f"{rate['end_to_end']:.2f} img/s, model alone {rate['model_only']:.2f} img/s, "
        f"ratio {row['ratio']:.2f} ({len(images)} images); the input alone "
        f"{rate['input_only']:.0f} img/s"
    )
    return row


def _interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, alternating which goes first (machines drift)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in list(runs) if repeat % 2 == 0 else list(reversed(runs)):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class _First:
    """The first `count` images of a .beton (an `Images`)."""

    def __init__(self, images: BetonImages, count: int) -> None:
        self.images, self.shapes = images, images.shapes[:count]

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.images[index]

