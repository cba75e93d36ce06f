"""`--decode auto`: decode on the GPU when the host cannot keep up with it.

On a CPU device there is nothing to choose (the model is the slower side): FFCV's workers.
On a CUDA device a short pilot, before the run's version opens, measures both sides on this
very node: the training crops per second this process's FFCV workers decode (the run's own
dataset, crop, scales and worker count, on the host alone), and the images per second the
model trains (forward and backward on a synthetic batch of the run's micro-batch, eager;
times the benchmark's compile gain when the run compiles). The host cannot keep up when it
decodes less than the model trains, with a margin for the jitter of both; then nvJPEG
decodes on the device (`--decode gpu`), which leaves the host only the file reads.
The choice is recorded in the run's config like an explicit `--decode`, and a resume
keeps it; the pilot's figures go to the run's results (`decode_pilot`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vggcli.config import TrainConfig
from vggcli.data.loader import make_loader
from vggcli.data.sampling import LoaderSpec
from vggcli.device import autocast

if TYPE_CHECKING:
    import torch

    from vggcli.models import VGG
    from vggcli.train import TrainData

COMPILE_GAIN = 1.36  # torch.compile on D's bf16 step, one H200 (docs/performance.md)
MARGIN = 1.1  # the host must decode 10% more than the model trains to count as keeping up
PILOT_IMAGES = 4096  # the host's pass: at most this many training crops
PILOT_SECONDS = 1.0  # the model's: timed steps for at least this long (after warm-up)


@dataclass(frozen=True)
class Pilot:
    """What the host decodes and what the model trains, per second, on this node."""

    host_img_s: float
    model_img_s: float  # with COMPILE_GAIN when the run compiles
    workers: int

    @property
    def decode(self) -> str:
        return "gpu" if self.host_img_s < MARGIN * self.model_img_s else "ffcv"

    def describe(self) -> str:
        return (f"decode: {self.decode} (auto: the host's {self.workers} loader workers "
                f"decode {self.host_img_s:,.0f} img/s, the model trains "
                f"{self.model_img_s:,.0f} img/s)")


def measure(config: TrainConfig, data: TrainData, model: VGG, device: torch.device,
            workers: int, world_size: int = 1) -> Pilot:
    """Both rates for one of `world_size` processes, on its device and workers. The model
    is moved to the device as training would; its gradients are cleared and the RNGs left
    as they were."""
    import torch

    batch = config.recipe.micro(world_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        host = host_rate(config, data, workers, batch)
        train = model_rate(config, model, device, batch)
    return Pilot(host, train * (COMPILE_GAIN if config.compile else 1.0), workers)


def host_rate(config: TrainConfig, data: TrainData, workers: int, batch: int) -> float:
    """Training crops per second from FFCV's workers on the host: one pass over up to
    PILOT_IMAGES of the first epoch's samples, timed from the first batch (which pays for
    the workers' start and the pipeline's compile)."""
    spec = LoaderSpec(data.train_beton, batch, config.net.crop, config.s_min, config.s_max,
                      config.recipe.seed, train=True, workers=workers, scheme=config.augmentation,
                      flip=config.recipe.flip)
    loader, order = make_loader(spec)
    order.start(0)
    order.current = order.current[:PILOT_IMAGES]
    count, started = 0, 0.0
    for images, _ in loader:
        if not started:
            started = time.perf_counter()
        else:
            count += len(images)
    seconds = time.perf_counter() - started
    return count / seconds if count else float("inf")  # one batch: nothing to compare


def model_rate(config: TrainConfig, model: VGG, device: torch.device, batch: int) -> float:
    """Images per second of eager forward and backward passes of `batch` images at the
    run's crop and precision, after two passes of warm-up (cuDNN's autotuning)."""
    import torch

    crop = config.net.crop
    model.to(device, memory_format=torch.channels_last)
    x = torch.rand(batch, 3, crop, crop, device=device).mul_(255)
    x = x.to(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        with autocast(device, config.precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step(), step()
    steps, started = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - started < PILOT_SECONDS:
        step()
        steps += 1
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return steps * batch / seconds


def chosen(config: TrainConfig, pilot: Pilot | None) -> TrainConfig:
    """The config with `auto` replaced by the pilot's choice, or on a CPU FFCV's workers."""
    return replace(config, decode=pilot.decode if pilot else "ffcv")
