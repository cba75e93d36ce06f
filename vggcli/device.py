"""Which device and precision a command runs on, and how runs name it.

Torch is imported inside the functions, so that `cpu_label` (used by the stages that need no
torch, such as fusing stored posteriors) costs nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vggcli.errors import VggError

if TYPE_CHECKING:
    import torch

Precision = Literal["bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")


def pick(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; a clear error for anything else
    and for a CUDA device this machine does not have. Every stage that computes picks its
    device here, so this is also where torch gets its cores back (`use_cores`)."""
    import torch

    use_cores()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise VggError(f"unknown device '{name}': choose auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (device.index or 0) >= count:
        raise VggError(f"device {name} asked for, but this machine has {count} CUDA device(s)")
    return device


def precision_for(device: torch.device, requested: str) -> Precision:
    """'auto' means bf16 where the hardware does it natively (AVX512-BF16/AMX, CUDA)."""
    if requested not in PRECISIONS:
        raise VggError(f"unknown precision '{requested}': choose auto, bf16 or fp32")
    if requested != "auto":
        return requested  # type: ignore[return-value]
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def compile_for(device: torch.device, requested: bool | None) -> bool:
    """No choice (None) means torch.compile on CUDA, where D's training step benchmarked
    1.36x faster on an H200, and eager on CPUs, where it gained 1.01x for a minute of compiling
    (docs/performance.md). The answer goes into the run's config: a resume keeps it."""
    return device.type == "cuda" if requested is None else requested


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The one mixed-precision context of training, evaluation and descriptors: bf16
    autocast when the precision chosen is bf16, a no-op for fp32."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def use_cores() -> None:
    """Give torch's CPU ops every core this process may use (OMP_NUM_THREADS when set, as
    `--nproc` sets it per process). Importing FFCV sets torch to one thread
    (ffcv/pipeline/compiler.py calls torch.set_num_threads(1)), which halved evaluation on
    2 cores; its loaders set their worker count again while they run."""
    import torch

    torch.set_num_threads(omp_threads() or available_cores())


def omp_threads() -> int:
    """OMP_NUM_THREADS's first level ("4" or "4,2"), 0 when unset or unreadable."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_label(workers: int | None = None) -> str:
    """'cpu (N cores)', with the worker count where it differs from the cores."""
    cores = available_cores()
    return f"cpu ({cores} cores)" if workers is None else f"cpu ({cores} cores, {workers} workers)"


def label(device: torch.device) -> str:
    """How a run's manifest names the device: the GPU's model, or the CPU's core count."""
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return cpu_label()
