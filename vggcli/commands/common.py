"""What every subcommand shares: common options, option parsing, one-line error reporting."""

from __future__ import annotations

import errno
import functools
import math
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console

from vggcli.errors import PREEMPTED, VggError
from vggcli.stages.arguments import PRECISIONS, check_name, check_reference

P = ParamSpec("P")
R = TypeVar("R")
N = TypeVar("N", int, float)

# Upper bounds of count options: far above any real use, low enough that a typo (a run of
# extra digits) is refused at once instead of hanging, filling memory or the disk.
MAX_BATCH = 65536  # images per step or pass
MAX_EPOCHS = 10_000  # also: patience, lr drops
MAX_STEPS = 10**9
MAX_PROCESSES = 1024  # --nproc, --workers
MAX_IMAGES = 10**8  # images or classes in a dataset, a sample or a count per class
MAX_REPEATS = 1000
MAX_MINUTES = 7 * 24 * 60.0  # a week
MAX_SCALE = 2048  # the largest smallest-side S or Q we rescale to (the paper's largest: 512)


def _checks(kind: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Tag an option's check with the kind of value it checks: the fuzz test in
    tests/test_hardening.py finds every option's check through the typer app and gives it
    that kind's wrong values, so a new option is covered (and one without a check fails)."""

    def tag(check: Callable[..., R]) -> Callable[..., R]:
        check.kind = kind  # type: ignore[attr-defined]
        return check

    return tag


def _usage(check: Callable[..., object], *args: object) -> None:
    """Run a check that raises our VggError (or an OSError, e.g. a name too long for the
    filesystem) as a typer usage error: `Invalid value for '--opt': ...`, exit code 2."""
    try:
        check(*args)
    except VggError as exc:
        raise typer.BadParameter(str(exc)) from None
    except OSError as exc:
        raise typer.BadParameter(exc.strerror or str(exc)) from None


def bounded(
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> Callable[[N | None], N | None]:
    """An option callback that refuses values outside [low, high] (or the open ends asked
    for), NaN and infinity included (NaN passes every comparison, so ranges alone let it
    through). typer prints the refusal as `Invalid value for '--lr': ...`, exit code 2."""
    wanted = _interval(low, high, open_low, open_high)

    def check(value: N | None) -> N | None:
        if value is None:
            return value
        below = low is not None and (value <= low if open_low else value < low)
        above = high is not None and (value >= high if open_high else value > high)
        if not math.isfinite(value) or below or above:
            raise typer.BadParameter(f"must be {wanted}, not {value}")
        return value

    check.bounds = (low, high, open_low, open_high)  # type: ignore[attr-defined]
    return _checks("range")(check)


def _interval(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    """'> 0', '>= 1', 'in [0, 1)': how a range reads in an error message."""
    if high is None:
        return f"{'>' if open_low else '>='} {low}"
    if low is None:
        return f"{'<' if open_high else '<='} {high}"
    return f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"


def one_of(*choices: str) -> Callable[[str | None], str | None]:
    """An option callback that refuses any value but `choices` before the command runs
    (before a --nproc relaunch or a --dry-run plan), as typer prints usage errors."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"choose {', '.join(choices)}, not '{value}'")
        return value

    return _checks("choice")(check)


def at_least(low: int, high: int) -> Callable[[N | None], N | None]:
    """A count option: at least `low`, at most `high`, one of the limits below."""
    return bounded(low, high)


@_checks("device")
def device_name(value: str | None) -> str | None:
    """--device: its shape only; whether this machine has that CUDA device is asked later."""
    if value is not None and not re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", value):
        raise typer.BadParameter(f"choose auto, cpu, cuda or cuda:N, not '{value}'")
    return value


def _checked_by(kind: str, check: Callable[[str], object]) -> Callable[[str | None], str | None]:
    """An option callback that runs `check` (raising VggError) on the value given."""

    def callback(value: str | None) -> str | None:
        if value is not None:
            _usage(check, value)
        return value

    return _checks(kind)(callback)


@_checks("reference")
def run_reference(ctx: typer.Context, value: str | list[str] | None) -> str | list[str] | None:
    """The runs a command reads must be there (check_reference), under --runs-root: an eager
    option, so parsed before this one."""
    refs = [] if value is None else [value] if isinstance(value, str) else value
    for ref in refs:
        _usage(check_reference, ref, runs_root(ctx.params.get("root")))
    return value


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # e.g. a name too long for the filesystem
        raise typer.BadParameter(f"{exc.strerror}: {str(path)[:40]}...") from None


@_checks("folder")
def folder_path(text: str) -> Path:
    """A folder to write in: refused when empty (it would mean the current folder: a
    preprocess once wrote its run into the source dataset) or naming a file."""
    if not text.strip():
        raise typer.BadParameter("is empty; name a folder")
    path = Path(text)
    for folder in (path, *path.parents):  # the first that exists must be a folder
        if _exists(folder):
            if not folder.is_dir():
                raise typer.BadParameter(f"{folder} is a file, not a folder")
            break
    return path


@_checks("existing folder")
def existing_folder(text: str) -> Path:
    """A folder to read: it must be there."""
    path = folder_path(text)
    if not path.exists():
        raise typer.BadParameter(f"folder {text} does not exist")
    return path


@_checks("assignment")
def assignment(text: str) -> str:
    """NAME=VALUE (`vgg pipeline run --set`): NAME as a pipeline's {placeholders} spell
    names; whether the file has that variable is the pipeline's to say."""
    from vggcli.pipeline.plan import NAME  # only when --set is given: not on every start-up

    name, equals, _ = text.partition("=")
    if not equals or not NAME.fullmatch(name):
        raise typer.BadParameter(f"'{text}' is not NAME=VALUE")
    return text


@_checks("existing file")
def existing_file(text: str) -> Path:
    """An input file option's value: it must be there (a missing --synsets was ignored)."""
    path = Path(text)
    if not text.strip() or not _exists(path):
        raise typer.BadParameter(f"no file '{text}'")
    if path.is_dir():
        raise typer.BadParameter(f"{text} is a folder, not a file")
    return path


@_checks("existing path")
def existing_path(text: str) -> Path:
    """An image or a folder of images to read: it must be there."""
    path = Path(text)
    if not text.strip() or not _exists(path):
        raise typer.BadParameter(f"no such file or folder '{text}'")
    return path


@_checks("new file")
def new_file_path(text: str) -> Path:
    """An output file option's value: not empty, not a folder, in a folder (not a file)."""
    path = Path(text)
    if not text.strip() or (_exists(path) and path.is_dir()):
        raise typer.BadParameter(f"'{text}' is not a file name")
    if _exists(path.parent) and not path.parent.is_dir():
        raise typer.BadParameter(f"{path.parent} is a file, not a folder")
    return path


RunsRoot = Annotated[
    Path | None,
    typer.Option(
        "--runs-root",
        parser=folder_path,
        envvar="VGG_RUNS",
        is_eager=True,  # before the options naming runs in it (run_reference)
        help="Folder holding the run directories (default ./runs; env VGG_RUNS).",
        show_default=False,
    ),
]

Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", callback=at_least(1, MAX_PROCESSES), help="Processes for decoding and writing (default: all cores)."
    ),
]


Precision = Annotated[
    str,
    typer.Option(callback=one_of(*PRECISIONS), help="auto (bf16 autocast where the CPU/GPU supports it natively), bf16 or fp32."),
]
Device = Annotated[str, typer.Option(callback=device_name, help="auto (CUDA when present), cpu or cuda[:N].")]


NProc = Annotated[
    int,
    typer.Option(
        "--nproc",
        callback=at_least(1, MAX_PROCESSES),
        help="Processes on this machine, one per GPU (or a share of the CPU cores): re-runs the command under torchrun --standalone; the results do not depend on it.",
    ),
]


def _skip_verification(skip: bool) -> bool:
    """--no-verify reaches every process of the command (torchrun ranks, pipeline steps)
    through the environment; integrity.py reads it there."""
    if skip:
        os.environ["VGG_NO_VERIFY"] = "1"
    return skip


NoVerify = Annotated[
    bool,
    typer.Option(
        "--no-verify",
        callback=_skip_verification,
        help="Do not hash input files against their recorded sha256 (sizes are still checked); `vgg verify RUN` checks on demand.",
    ),
]


def runs_root(value: Path | None) -> Path:
    return value if value is not None else Path("runs")


def processes(value: int | None) -> int:
    """Worker processes of a preprocess: --workers, else every core this process may use."""
    return value or len(os.sched_getaffinity(0))


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
        raise VggError(f"must be S (e.g. 256) or Smin-Smax (e.g. 256-512), not '{text}'",
                       field="scale")
    if parts[-1] > MAX_SCALE:
        raise VggError(f"{text}: S above {MAX_SCALE} is not supported", field="scale")
    return parts[0], parts[-1]


def parse_scales(text: str | None) -> tuple[int, ...] | None:
    """--scales '256,384,512' -> (256, 384, 512): test scales Q, each at most MAX_SCALE
    (an image rescaled to Q=100000 would need tens of GB)."""
    if text is None:
        return None
    try:
        scales = tuple(int(q) for q in text.split(","))
    except ValueError:
        raise VggError(f"must be comma-separated integers, not '{text}'", field="scales") from None
    if not all(0 < q <= MAX_SCALE for q in scales):
        raise VggError(f"{text}: each Q must be in [1, {MAX_SCALE}]", field="scales")
    return scales


scale_text = _checked_by("scale", parse_scale)  # --scale: S or Smin-Smax
scales_text = _checked_by("scales", parse_scales)  # --scales: Q1,Q2,...
run_name = _checked_by("name", check_name)  # --name, before any run is opened


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
