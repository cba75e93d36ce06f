"""What every subcommand shares: common options, option parsing, one-line error reporting."""

from __future__ import annotations

import errno
import functools
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console

from vggcli.errors import PREEMPTED, VggError

P = ParamSpec("P")
R = TypeVar("R")

RunsRoot = Annotated[
    Path | None,
    typer.Option(
        "--runs-root",
        envvar="VGG_RUNS",
        help="Folder holding the run directories (default ./runs; env VGG_RUNS).",
        show_default=False,
    ),
]

Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", min=1, help="Processes for decoding and writing (default: all cores)."
    ),
]


Precision = Annotated[
    str,
    typer.Option(help="auto (bf16 autocast where the CPU/GPU supports it natively), bf16 or fp32."),
]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")]


NProc = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Processes on this machine, one per GPU (or a share of the CPU cores): re-runs the command under torchrun --standalone; the results do not depend on it.",
    ),
]


def runs_root(value: Path | None) -> Path:
    return value if value is not None else Path("runs")


def workers(value: int | None) -> int:
    """Loader workers of this process: the cores shared among the processes on this node."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return value or max(1, len(os.sched_getaffinity(0)) // local)


def without_nproc(args: list[str]) -> list[str]:
    """The command line with its --nproc option taken out."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def relaunch(nproc: int) -> None:
    """`--nproc N` (N > 1) outside torchrun: run the same command (without `--nproc`) as N
    processes through torchrun's own launcher (`--standalone`), so nobody has to remember
    it, then exit with rank 0's exit code (75 when SIGTERM stopped the job) and no launcher
    traceback: the ranks have already said what went wrong. Under torchrun already
    (LOCAL_RANK set) the launcher's own numbers hold and this does nothing."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        shutdown_timeout=120,  # time for rank 0 to write a checkpoint after SIGTERM
    )
    try:
        elastic_launch(config, sys.executable)("-m", "vggcli", *without_nproc(sys.argv[1:]))
    except ChildFailedError as failed:
        first = failed.failures.get(0) or next(iter(failed.failures.values()))
        raise typer.Exit(first.exitcode if first.exitcode > 0 else 1) from None
    except SignalException:
        raise typer.Exit(PREEMPTED) from None
    raise typer.Exit(0)


def parse_scale(text: str) -> tuple[int, int]:
    """--scale '256' -> (256, 256); '256-512' -> scale jitter S in [256, 512]."""
    try:
        parts = [int(p) for p in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] > parts[-1] or parts[0] <= 0:
        raise VggError(f"--scale must be S (e.g. 256) or Smin-Smax (e.g. 256-512), not '{text}'")
    return parts[0], parts[-1]


def print_plan(title: str, rows: list[tuple[str, str]]) -> None:
    """What a command would do, as a two-column table."""
    from rich.table import Table

    from vggcli.progress import console

    table = Table("", "", title=title, show_header=False)
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)


def done(path: Path) -> None:
    """The last line of every command that writes something: where it went (said once, by
    rank 0, when several processes ran it)."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"done: {path}")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print what the user can act on as one red line and exit non-zero; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line, however long
        try:
            return fn(*args, **kwargs)
        except VggError as exc:
            flag = f"--{exc.field.replace('_', '-')}: " if exc.field else ""
            rank = os.environ.get("RANK", "0")
            who = "" if rank == "0" else f"(rank {rank}) "
            err.print(f"[red]error:[/] {who}{flag}{exc}")
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            what = "disk full" if exc.errno in (errno.ENOSPC, errno.EFBIG) else "I/O error"
            err.print(f"[red]error:[/] {what}: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]: re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper
