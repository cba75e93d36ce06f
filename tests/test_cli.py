"""The CLI surface: help texts speak the paper's terms, demo data is deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vggcli.data.synthetic import SyntheticSpec, render


def test_top_level_help_names_the_paper_terms(vgg) -> None:
    result = vgg("--help")
    assert result.exit_code == 0
    for term in (
        "preprocess",
        "train",
        "evaluate",
        "fuse",
        "pipeline",
        "report",
        "configs A",
        "S is the training scale",
    ):
        assert term in result.output


@pytest.mark.parametrize(
    "command",
    [
        "preprocess",
        "make-demo-data",
        "runs",
        "verify",
        "train",
        "finetune-scale",
        "evaluate",
        "fuse",
        "export",
        "report",
        "pipeline run",
        "pipeline status",
        "bench train",
        "bench evaluate",
        "bench loader",
    ],
)
def test_every_command_has_help(vgg, command: str) -> None:
    result = vgg(*command.split(), "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_help_texts_reflow_with_the_terminal() -> None:
    """A hard line break inside a command's help sentence shows up verbatim in the command
    list of `vgg --help`; every help text is one paragraph per line."""
    import typer.main

    from vggcli.cli import app

    group = typer.main.get_command(app)
    pending = [group]
    seen = 0
    while pending:
        command = pending.pop()
        pending += list(getattr(command, "commands", {}).values())
        texts = [command.help or "", *(p.help or "" for p in command.params)]
        for text in texts:
            for paragraph in text.strip().split("\n\n"):
                assert "\n" not in paragraph.strip(), (command.name, paragraph)
        seen += 1
    assert seen == 25  # vgg, its 15 commands, the bench and pipeline groups and their 7


def test_demo_data_is_a_pure_function_of_the_seed(vgg, tmp_path: Path) -> None:
    spec = SyntheticSpec(seed=3)
    first, again = render(spec, "train", 2, 5), render(spec, "train", 2, 5)
    assert first.tobytes() == again.tobytes()
    assert render(SyntheticSpec(seed=4), "train", 2, 5).tobytes() != first.tobytes()
    out = tmp_path / "demo"
    result = vgg(
        "make-demo-data",
        str(out),
        "--classes",
        "3",
        "--train-per-class",
        "4",
        "--val-per-class",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "n90000000",
        "n90001111",
        "n90002222",
    ]
    assert len(list((out / "val").glob("ILSVRC2012_val_*.JPEG"))) == 6
    sizes = {_image_size(p) for p in (out / "train").rglob("*.JPEG")}
    assert len(sizes) > 1 and all(min(s) >= 96 and max(s) <= 400 for s in sizes)
    again = vgg("make-demo-data", str(out))
    assert again.exit_code == 2 and "not empty" in again.output
    rows = (out / "LOC_val_solution.csv").read_text().splitlines()
    assert rows[0] == "ImageId,PredictionString" and len(rows) == 7


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_scene_demo_data_is_deterministic_and_varied(vgg, tmp_path: Path) -> None:
    spec = SyntheticSpec(seed=3, style="scenes")
    first = render(spec, "train", 7, 5)
    assert first.tobytes() == render(spec, "train", 7, 5).tobytes()
    assert first.tobytes() != render(spec, "train", 6, 5).tobytes()
    out = tmp_path / "scenes"
    args = ["--classes", "10", "--train-per-class", "1", "--val-per-class", "1"]
    result = vgg("make-demo-data", str(out), *args, "--style", "scenes", "--clutter", "8")
    assert result.exit_code == 0, result.output
    names = (out / "LOC_synset_mapping.txt").read_text().split("\n")
    assert names[0].endswith(" striped-disc") and names[9].endswith(" dotted-cross")
    assert len(list((out / "train").glob("*/*.JPEG"))) == 10
    bad = vgg("make-demo-data", str(tmp_path / "x"), "--min-object", "0.8", "--max-object", "0.5")
    assert bad.exit_code != 0 and "need 0 < min <= max" in bad.output


def test_loader_workers_default_to_omp_num_threads_else_the_cores_per_rank(monkeypatch) -> None:
    """FFCV's loader sets torch's threads to its worker count: on a CPU a default above
    OMP_NUM_THREADS would oversubscribe cores the user (or `--nproc`, or a pipeline's
    --jobs) gave to this process. On CUDA the cores per rank, whatever OMP_NUM_THREADS says
    (torchrun sets it to 1 for each of several ranks: one decoder per GPU)."""
    import os

    from vggcli.config import default_workers

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_workers() == 3 and default_workers("cuda") == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_workers("cuda") == max(1, cores // 2)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_workers() == max(1, cores // 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers() == cores
