"""What every subcommand shares: common options, option parsing, one-line error reporting."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console

from vggcli.errors import VggError

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


def runs_root(value: Path | None) -> Path:
    return value if value is not None else Path("runs")


def workers(value: int | None) -> int:
    return value or len(os.sched_getaffinity(0))


def parse_scale(text: str) -> tuple[int, int]:
    """--scale '256' -> (256, 256); '256-512' -> scale jitter S in [256, 512]."""
    try:
        parts = [int(p) for p in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] > parts[-1] or parts[0] <= 0:
        raise VggError(f"--scale must be S (e.g. 256) or Smin-Smax (e.g. 256-512), not '{text}'")
    return parts[0], parts[-1]


def done(path: Path) -> None:
    """The last line of every command that writes something: where it went."""
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
            err.print(f"[red]error:[/] {flag}{exc}")
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            what = "disk full" if exc.errno in (errno.ENOSPC, errno.EFBIG) else "I/O error"
            err.print(f"[red]error:[/] {what}: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]: re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper
