"""The `vgg` typer app: wires the subcommands, nothing else."""

from __future__ import annotations

import typer

from vggcli.commands import (
    bench,
    demo_data,
    evaluate,
    pipeline,
    preprocess,
    report,
    runs,
    train,
)

app = typer.Typer(
    name="vgg",
    help=(
        "Reproduce Simonyan & Zisserman, 'Very Deep Convolutional Networks for Large-Scale "
        "Image Recognition' (VGG, 2014). Nets are Table 1's configs A, A-LRN, B, C, D, E; "
        "S is the training scale (smallest image side before the 224 crop), Q the test scale."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("make-demo-data")(demo_data.command)
app.command("preprocess")(preprocess.command)
app.command("train")(train.train_command)
app.command("finetune-scale")(train.finetune_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("fuse")(evaluate.fuse_command)
app.command("report")(report.command)
app.command("runs")(runs.command)
app.add_typer(bench.app, name="bench")
app.add_typer(pipeline.app, name="pipeline")
