"""The `vgg` typer app: wires the subcommands, nothing else."""

from __future__ import annotations

import ctypes
import os
import sys
import traceback
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from vggcli.commands import (
    adopt,
    bench,
    board,
    demo_data,
    evaluate,
    export,
    features,
    import_weights,
    pipeline,
    predict,
    preprocess,
    report,
    runs,
    train,
    verify,
)


class OneLineUsageErrors(TyperGroup):
    """Usage mistakes (unknown option, value out of range) as one red line naming the
    option, exit code 2, like every other error of ours; typer would draw a boxed panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # click's ClickException, vendored by typer
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # type: ignore[attr-defined]
            else:
                _print_usage_error(exc)
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _print_usage_error(exc: typer.TyperException) -> None:
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = exc.format_message()  # type: ignore[attr-defined]
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[red]error:[/] {message}{hint}", markup=True)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="vgg",
    help=(
        "Reproduce Simonyan & Zisserman, 'Very Deep Convolutional Networks for Large-Scale "
        "Image Recognition' (VGG, 2014). Nets are Table 1's configs A, A-LRN, B, C, D, E "
        "(and B-5x5, Sect. 4.1's shallow B); S is the training scale (smallest image side "
        "before the 224 crop), Q the test scale."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("make-demo-data")(demo_data.command)
app.command("preprocess")(preprocess.command)
app.command("adopt")(adopt.command)
app.command("train")(train.train_command)
app.command("finetune-scale")(train.finetune_command)
app.command("import-weights")(import_weights.command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("fuse")(evaluate.fuse_command)
app.command("export")(export.command)
app.command("predict")(predict.command)
app.command("features")(features.command)
app.command("report")(report.command)
app.command("runs")(runs.command)
app.command("verify")(verify.command)
app.command("tensorboard")(board.command)
app.add_typer(bench.app, name="bench")
app.add_typer(pipeline.app, name="pipeline")


def main() -> None:
    """The `vgg` command and `python -m vggcli`: run the command, then end the process at
    once with its exit code, without the interpreter's teardown. Everything a command writes
    is closed and renamed before it returns; the teardown only unloads modules, and there
    numba's TBB layer hung a process that had run on one core (a one-CPU Slurm job, a
    `--jobs` slot) for good after its work was done (numba issue #10556). Pipeline steps
    have always ended this way (zygote.py)."""
    try:
        app(prog_name="vgg")
        code = 0
    except SystemExit as exc:  # how click ends every command: a message is printed, then 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # a bug: its traceback, as the interpreter would print it
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)  # C libraries' buffered output too
    os._exit(code)
