"""Side-by-side benchmarks: ours against a reference, same cores, same inputs, interleaved.

Machines are noisy, so we report ratios measured in one run, alternating which model goes
first, and take medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vggcli.distributed import Cluster
from vggcli.models import VGG, NetSpec


@dataclass(frozen=True)
class TrainBench:
    batch: int = 8  # images per step (per process when scaling)
    repeats: int = 3
    size: int = 224
    precisions: tuple[str, ...] = ("fp32", "bf16")
    width: float = 1.0  # of net D in the scaling measurement (the comparison is full size)


@dataclass(frozen=True)
class EvaluateBench:
    q: int = 256
    repeats: int = 2


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


def train_step_throughput(bench: TrainBench, report: Callable[[str], None] = print) -> list[dict]:
    """img/s of an SGD step (forward, backward, update) of full-size D at 224, ours vs
    torchvision's vgg16, fp32 (contiguous) and bf16 autocast + channels_last."""
    rows = []
    torch.manual_seed(0)
    for precision in bench.precisions:
        bf16 = precision == "bf16"
        layout = torch.channels_last if bf16 else torch.contiguous_format
        x = torch.randn(bench.batch, 3, bench.size, bench.size).to(memory_format=layout)
        y = torch.randint(0, 1000, (bench.batch,))
        models = {"ours (VGG D)": _ours(), "torchvision vgg16": _torchvision()}
        optimizers = {}
        for name, model in models.items():
            model.to(memory_format=layout).train()
            optimizers[name] = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            _step_time(model, optimizers[name], x, y, bf16)  # warm-up: allocators, kernels
        times: dict[str, list[float]] = {name: [] for name in models}
        for repeat in range(bench.repeats):
            order = list(models) if repeat % 2 == 0 else list(reversed(models))
            for name in order:
                times[name].append(_step_time(models[name], optimizers[name], x, y, bf16))
        ours, ref = (bench.batch / statistics.median(times[n]) for n in models)
        row = {
            "precision": "bf16 + channels_last" if bf16 else "fp32",
            "batch": bench.batch,
            "ours_img_s": ours,
            "reference_img_s": ref,
            "ratio": ours / ref,
        }
        report(
            f"{row['precision']}: ours {ours:.2f} img/s, torchvision {ref:.2f} img/s, "
            f"ratio {row['ratio']:.2f}"
        )
        rows.append(row)
    return rows


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
    (5x5 grid + mirrors = 50 views per scale) for full-size D, at Q and over three scales
    {Q-32, Q, Q+32}; one run, interleaved, medians."""
    import numpy as np

    from vggcli.eval_settings import EvalSettings, Mode
    from vggcli.evaluate import Evaluator, crop_views, rescale

    q, repeats = bench.q, bench.repeats
    scales = (q - 32, q, q + 32)
    settings = EvalSettings(Mode.DENSE_CROP, scales, 224, precision)
    model = VGG(NetSpec("D"))
    model.set_normalisation([123.7, 116.8, 103.9])
    evaluator = Evaluator(model, settings, torch.device("cpu"))
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
