"""One process or many: who this process is in a torchrun job, and the few collectives we use.

torchrun (`python -m torch.distributed.run`) starts one process per device and tells each
its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE). Without
those variables, or with a world of one, everything here is a no-op and imports nothing
heavy until asked. NCCL on CUDA, gloo on CPU, chosen by the device; every collective has a
timeout, so a rank that dies makes the others fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from vggcli import device as devices
from vggcli.errors import VggError, WorkFailed

if TYPE_CHECKING:
    import torch

TIMEOUT_ENV = "VGG_COLLECTIVE_TIMEOUT"  # seconds; default 600
T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """This process's place in the job; `backend` is None for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def lead(self) -> bool:
        """Rank 0: the one process that writes the run."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)

    def facts(self) -> dict[str, Any]:
        """What a manifest records about how the run was executed (not part of its config)."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "nodes": self.nodes,
            "processes_per_node": self.local_world_size,
            **slurm_facts(),
        }

    # -- collectives (no-ops for a single process) ------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on rank 0 (an empty list elsewhere)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        found: list[Any] | None = [None] * self.world_size if self.lead else None
        dist.gather_object(obj, found, dst=0)
        return found or []

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.distributed:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


SINGLE = Cluster()


def from_environment() -> Cluster:
    """The place torchrun gave this process; a single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Cluster(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )


@contextlib.contextmanager
def joined(requested_device: str) -> Iterator[tuple[Cluster, torch.device]]:
    """Join the job torchrun started (or stay a single process) and pick this rank's
    device: cuda:LOCAL_RANK with NCCL where CUDA is asked for or auto-detected, else the CPU
    with gloo. Leaves the process group when the block ends."""
    cluster = from_environment()
    if cluster.world_size == 1:
        yield cluster, devices.pick(requested_device)
        return
    import torch
    import torch.distributed as dist

    cuda = requested_device.startswith("cuda") or (
        requested_device == "auto" and torch.cuda.is_available()
    )
    if requested_device.startswith("cuda:"):
        raise VggError("with several processes each rank takes cuda:LOCAL_RANK: give --device cuda")
    if cuda:
        chosen = devices.pick(f"cuda:{cluster.local_rank}")
        torch.cuda.set_device(chosen)
    else:
        chosen = devices.pick("cpu")
    backend = "nccl" if cuda else "gloo"
    timeout = dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    dist.init_process_group(backend, timeout=timeout)
    cluster = Cluster(
        cluster.rank, cluster.world_size, cluster.local_rank, cluster.local_world_size, backend
    )
    if not cluster.lead:
        from vggcli.progress import console

        console.quiet = True  # one voice: rank 0 reports for all
    try:
        yield cluster, chosen
    finally:
        gc.collect()  # DDP wrappers still referencing the group go first
        dist.destroy_process_group()


def lead_does(cluster: Cluster, work: Callable[[], T]) -> T | None:
    """Rank 0 does `work` (opening the run, reading or writing a checkpoint) and returns its
    result (the others get None); every rank learns whether it worked and fails with it, so
    none waits in a collective for a rank 0 that gave up."""
    result = None
    if cluster.lead:
        try:
            result = work()
        except Exception as exc:
            cluster.broadcast(f"rank 0 failed: {exc}")
            raise
    failure = cluster.broadcast(None)
    if failure is not None:
        raise WorkFailed(failure)
    return result


def slurm_facts() -> dict[str, Any]:
    """The Slurm job this process runs in, if any: its id, nodes and how often it was
    requeued (a preempted step's versions record one execution per start)."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    return {
        "slurm_job": os.environ["SLURM_JOB_ID"],
        "slurm_nodes": os.environ.get("SLURM_JOB_NODELIST", ""),
        "slurm_requeues": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }
