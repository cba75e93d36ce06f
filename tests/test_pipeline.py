"""Pipelines: order, skipping, resuming, bad files; the report's tables come from the runs."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import make_dataset, vgg_process
from tests.test_train import TINY
from vggcli.data.synthetic import SyntheticSpec
from vggcli.errors import VggError
from vggcli.pipeline import plan as pipeline
from vggcli.runs import resolve, versions

TINY_NET = " ".join(TINY)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[[step]]\nname = 'a'\nrun = 'train --net A'\n[[step", "TOML error"),
        ("[[step]]\nname = 'a'\nrun = 'dance'\n", "step a: unknown command 'dance'"),
        ("[[step]]\nname = 'a'\nrun = 'train --init-from {b}'\n", "step a: {b} is neither"),
        (
            "[[step]]\nname = 'a'\nrun = 'train --data {b}'\n[[step]]\nname = 'b'\n"
            "run = 'train --data {a}'\n",
            "depend on each other in a cycle",
        ),
        ("[[step]]\nname = 'a'\nrun = 'train --data {a}'\n", "cannot use its own run"),
        ("[[step]]\nname = 'a'\nrun = 'train --runs-root /x'\n", "--runs-root is the pipeline's"),
        ("[[step]]\nname = 'a'\nrun = 'train --name=b'\n", "step a: --name is the pipeline's"),
        ("[vars]\nx = '1'\n", "no [[step]] tables"),
        ("step = 'notalist'\n", "`step` must be [[step]] tables"),
        ("step = [1, 2]\n", "`step` must be [[step]] tables"),
        ("vars = 3\n[[step]]\nname = 'a'\nrun = 'train'\n", "[vars] must be a table"),
        ("pipeline = 'x'\n[[step]]\nname = 'a'\nrun = 'train'\n", "[pipeline] must be"),
    ],
)
def test_bad_pipeline_files_name_the_file_and_step(tmp_path, body, message) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(VggError, match=re.escape(message)) as error:
        pipeline.load(path)
    assert str(path) in str(error.value)


def test_steps_run_in_dependency_order_whatever_the_file_order(tmp_path) -> None:
    path = _write(
        tmp_path,
        """
        [[step]]
        name = "eval"
        run = "evaluate {A}"
        [[step]]
        name = "A"
        run = "train --net A --data {data}"
        [[step]]
        name = "data"
        run = "preprocess somewhere"
    """,
    )
    plan = pipeline.load(path, tmp_path / "runs")
    assert [s.name for s in plan.steps] == ["data", "A", "eval"]
    assert plan.steps[2].inputs == ("A",)


def test_cli_reports_bad_pipeline_as_one_line(vgg, tmp_path) -> None:
    path = _write(tmp_path, "[[step]]\nname = 'a'\nrun = 'dance'\n")
    result = vgg("pipeline", "run", str(path))
    assert result.exit_code == 2 and "unknown command" in result.output
    assert result.output.strip().count("\n") == 0


@pytest.mark.slow
def test_pipeline_runs_skips_finished_steps_and_reports_from_the_runs(vgg, tmp_path) -> None:
    source = make_dataset(tmp_path / "tiny", SyntheticSpec(10, 20, 5, seed=2))
    path = _write(
        tmp_path,
        f"""
        [pipeline]
        runs_root = "{tmp_path / "runs"}"
        [vars]
        net = "{TINY_NET} --epochs 1"
        [[step]]
        name = "data"
        run = "preprocess {source} --max-side 128"
        [[step]]
        name = "A"
        run = "train --net A --scale 40 --data {{data}} {{net}}"
        [[step]]
        name = "D"
        run = "train --net D --scale 40 --init-from {{A}} --data {{data}} {{net}}"
        [[step]]
        name = "D-jitter"
        run = "finetune-scale {{D}} --scale 32-48 --epochs 1"
        [[step]]
        name = "eval-A"
        run = "evaluate {{A}} --multi-scale"
        [[step]]
        name = "eval-D-jitter"
        run = "evaluate {{D-jitter}} --multi-scale --mode dense+crop"
        [[step]]
        name = "fuse"
        run = "fuse {{eval-A}} {{eval-D-jitter}} --mode dense"
    """,
    )
    dry = vgg("pipeline", "run", str(path), "--dry-run")
    assert dry.exit_code == 0 and "to run data" in dry.output.replace("\n", " ")
    first = vgg("pipeline", "run", str(path))
    assert first.exit_code == 0, first.output
    assert "7 step(s) run" in first.output
    root = tmp_path / "runs"
    assert resolve("D-jitter", root).manifest()["parents"][0]["run"] == "D"
    again = vgg("pipeline", "run", str(path))
    assert again.exit_code == 0 and "0 step(s) run" in again.output
    assert all(len(versions(root / s)) == 1 for s in ("data", "A", "D", "fuse"))
    status = vgg("pipeline", "status", str(path))
    assert status.output.count("done") == 7

    report = vgg("report", "--pipeline", str(path))
    assert report.exit_code == 0, report.output
    text = (resolve("report", root).path / "report.md").read_text()
    evaluation = resolve("eval-A", root).results()["errors"]
    single = next(r for r in evaluation if r["method"] == "dense" and r["scales"] == [40])
    se = 100 * (single["top1_err"] * (1 - single["top1_err"]) / 50) ** 0.5
    top1, top5 = 100 * single["top1_err"], 100 * single["top5_err"]
    expected = f"| A | 40 | 40 | {top1:.1f} ± {se:.1f} | {top5:.1f} |"
    assert expected in text  # Table 3 is read from the evaluation run
    fusion = next(r for r in resolve("fuse", root).results()["errors"] if r["name"] == "fusion")
    group = "dense, 2 nets, no paper counterpart"  # A and jittered D are not Table 6's pairs
    assert f"| {group} | fusion | {100 * fusion['top1_err']:.1f} ± " in text
    claim = "| D: jitter S=[32;48] beats fixed S=40 (Table 3) | 25.6 vs 27.0 |"
    assert f"{claim} - | - | - | - | not run |" in text  # our scales in the paper's roles
    assert "29.6 / 10.4" in text  # the paper's A beside ours
    for plot in ("training-curves.png", "error-vs-scale.png"):
        assert (resolve("report", root).path / plot).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_killed_pipeline_resumes_inside_its_training_step(tmp_path) -> None:
    source = make_dataset(tmp_path / "tiny", SyntheticSpec(10, 20, 5, seed=2))
    root = tmp_path / "runs"
    path = _write(
        tmp_path,
        f"""
        [pipeline]
        runs_root = "{root}"
        [[step]]
        name = "data"
        run = "preprocess {source} --max-side 128"
        [[step]]
        name = "A"
        run = "train --net A --scale 40 --epochs 3 --checkpoint-steps 1 --data {{data}} {TINY_NET}"
    """,
    )
    process = vgg_process("pipeline", "run", str(path), runs_root=root)
    metrics = root / "A" / "v001" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the pipeline finished before it could be killed"
    process.send_signal(signal.SIGKILL)  # the pipeline only: its step must not live on
    process.wait()
    deadline = time.time() + 30
    while versions(root / "A")[0].status() == "running" and time.time() < deadline:
        time.sleep(0.1)
    # the step got SIGTERM when the pipeline died: it wrote a checkpoint and stopped
    stopped = versions(root / "A")[0]
    assert stopped.status() == "failed" and "SIGTERM" in stopped.manifest()["error"]
    plan = pipeline.load(path)
    assert pipeline.state(plan, plan.steps[1])[0] == "interrupted: resumes"
    rerun = vgg_process("pipeline", "run", str(path), runs_root=root)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "skip data" in output and "resuming at epoch" in output
    (version,) = versions(root / "A")
    assert version.status() == "complete" and version.manifest()["attempts"] == 2


def test_set_replaces_a_variable_and_only_the_steps_using_it_run_again(vgg, tmp_path) -> None:
    """`--set NAME=VALUE` changes a variable for one command: a step whose resolved command
    changes makes a new version, a step that does not use the variable stays done. A name
    the file lacks, or a value without '=', is one line and exit 2."""
    source = make_dataset(tmp_path / "tiny", SyntheticSpec(2, 2, 1))
    path = _write(
        tmp_path,
        f"""
        [vars]
        side = "64"
        [[step]]
        name = "small"
        run = "preprocess {source} --max-side {{side}}"
        [[step]]
        name = "whole"
        run = "preprocess {source}"
    """,
    )
    root = tmp_path / "runs"
    first = vgg("pipeline", "run", str(path), "--runs-root", str(root))
    assert first.exit_code == 0 and "2 step(s) run" in first.output, first.output
    plan = pipeline.load(path, root, overrides=(("side", "80"), ("side", "48")))
    assert pipeline.resolve_args(plan, plan.step("small"))[1:4] == [str(source), "--max-side",
                                                                      "48"]
    assert {n: s for n, (s, _) in pipeline.states(plan).items()} == {"small": "to run",
                                                                      "whole": "done"}
    again = vgg("pipeline", "run", str(path), "--set", "side=48", "--runs-root", str(root))
    assert again.exit_code == 0 and "1 step(s) run" in again.output, again.output
    assert [len(versions(root / n)) for n in ("small", "whole")] == [2, 1]
    assert resolve("small", root).manifest()["command"][-3:] == ["48", "--name", "small"]
    for wrong, message in [("sid=48", f"--set: {path} has no variable 'sid' to set (it has: side)"),
                           ("side", "'side' is not NAME=VALUE")]:
        result = vgg("pipeline", "run", str(path), "--set", wrong, "--runs-root", str(root))
        assert result.exit_code == 2
        (line,) = [t for t in result.output.splitlines() if t.startswith("error")]
        assert message in line


def test_no_flip_reaches_every_train_step_and_is_part_of_its_command(vgg, tmp_path) -> None:
    path = _write(
        tmp_path,
        """
        [[step]]
        name = "A"
        run = "train --net A"
        [[step]]
        name = "eval"
        run = "evaluate {A}"
    """,
    )
    plan = pipeline.load(path, tmp_path / "runs", flip=False)
    assert pipeline.resolve_args(plan, plan.steps[0]) == ["train", "--net", "A", "--name", "A",
                                                          "--no-flip"]
    flipped = pipeline.load(path, tmp_path / "runs")
    assert "--no-flip" not in pipeline.resolve_args(flipped, flipped.steps[0])
    shown = vgg("pipeline", "run", str(path), "--no-flip", "--dry-run")
    assert shown.exit_code == 0 and "vgg train --net A --name A --no-flip" in shown.output


@pytest.mark.parametrize(
    ("name", "small", "large", "jitter"),
    [("paper", 256, 384, "256-512"), ("smoke", 80, 112, "80-144")],
)
def test_shipped_pipelines_fuse_the_ilsvrc_submissions_seven_nets(
    name: str, small: int, large: int, jitter: str
) -> None:
    """Sect. 4.4's submission: D, C, E at both fixed scales and the multi-scale D fine-tuned
    in its FC layers only (from the large-scale D), each evaluated dense and multi-scale;
    B and its shallow 5x5 variant (random init, like A) on a centre crop (Sect. 4.1)."""
    shipped = pipeline.load(Path(__file__).parents[1] / "pipelines" / f"{name}.toml")
    steps = {s.name: s for s in shipped.steps}

    def option(step: str, flag: str) -> str:
        words = steps[step].command.split()
        return words[words.index(flag) + 1]

    def model(step: str) -> tuple[str, str]:
        """(net, training scale, with '+fc' for an FC-only fine-tune) of a model step."""
        words = steps[step].command.split()
        scale = option(step, "--scale") + ("+fc" if "--fc-only" in words else "")
        if words[0] == "train":
            return option(step, "--net"), scale
        return model(steps[step].inputs[0])[0], scale

    members = steps["fuse-ilsvrc"].inputs
    assert "--mode dense" in steps["fuse-ilsvrc"].command
    for member in members:
        assert re.fullmatch(r"evaluate \{[^}]+\} --multi-scale", steps[member].command)
    fixed = [(net, str(s)) for net in "DCE" for s in (small, large)]
    expected = [*fixed, ("D", f"{jitter}+fc")]
    assert sorted(model(steps[m].inputs[0]) for m in members) == sorted(expected)
    assert steps["D-jitter-fc"].inputs == (f"D-{large}",)
    assert option("B-5x5", "--net") == "B-5x5" and "--init-from" not in steps["B-5x5"].command
    for net in ("B", "B-5x5"):
        assert steps[f"eval-{net}-centre"].command == f"evaluate {{{net}}} --mode centre"


def test_warm_launcher_runs_each_step_as_a_fresh_command(tmp_path: Path) -> None:
    """Steps forked from the zygote record the command `python -m vggcli ARGS` would, get
    their own environment, and report their exit codes."""
    import os

    from vggcli.zygote import warm_launcher

    source = make_dataset(tmp_path / "tiny", SyntheticSpec(2, 2, 1))
    env = {**os.environ, "VGG_RUNS": str(tmp_path / "runs")}
    args = ["preprocess", str(source), "--name", "data", "--max-side", "64"]
    with warm_launcher() as launch:
        assert launch(args, env) == 0
        assert launch(["preprocess", str(tmp_path / "missing")], env) != 0
        assert launch(["runs"], env) == 0  # the child after a failed one is fresh
    command = resolve("data", tmp_path / "runs").manifest()["command"]
    entry = Path(__import__("vggcli").__file__).with_name("__main__.py")
    assert command == [str(entry), *args]


def _three_nets(tmp_path: Path, root: Path, source: Path, bad: str = "") -> Path:
    """data -> A -> B and data -> A2: A and A2 can run at once."""
    path = tmp_path / f"{root.name}.toml"
    path.write_text(textwrap.dedent(f"""
        [pipeline]
        runs_root = "{root}"
        [vars]
        net = "{TINY_NET} --epochs 1"
        [[step]]
        name = "data"
        run = "preprocess {source} --max-side 64"
        [[step]]
        name = "A"
        run = "train --net A --scale 40 --data {{data}} {{net}}{bad}"
        [[step]]
        name = "A2"
        run = "train --net A --scale 48 --data {{data}} {{net}}"
        [[step]]
        name = "B"
        run = "train --net B --scale 40 --init-from {{A}} --data {{data}} {{net}}"
    """))
    return path


def test_jobs_match_the_serial_run_and_a_changed_step_reruns_every_step_after_it(
    vgg, tmp_path
) -> None:
    """--jobs 2 on 2 cores: each step runs on one core; a serial run pinned to one core
    (`taskset -c 0`: CPU results depend on the core count, which sets the loader's workers
    and, through FFCV, torch's threads) makes every weight the same. A and A2 overlap.
    Then A's command changes: A makes a new version, and B, which matched A's old version,
    is not taken as done but runs again on the new one (by --jobs too)."""
    from vggcli.pipeline import local

    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    source = make_dataset(tmp_path / "tiny", SyntheticSpec(4, 6, 3, seed=2))
    jobs, serial_root = tmp_path / "jobs", tmp_path / "serial"
    together = vgg("pipeline", "run", str(_three_nets(tmp_path, jobs, source)), "--jobs", "2",
                   "--runs-root", str(jobs))
    assert together.exit_code == 0 and "4 step(s) run" in together.output, together.output
    os.sched_setaffinity(0, local.slots(2)[0].cores)  # the launcher and its steps inherit it
    try:
        serial = vgg("pipeline", "run", str(_three_nets(tmp_path, serial_root, source)),
                     "--runs-root", str(serial_root))
    finally:
        os.sched_setaffinity(0, cores)
    assert serial.exit_code == 0, serial.output
    for name in ("A", "A2", "B"):
        ours = torch.load(resolve(name, tmp_path / "jobs").path / "model.pt", weights_only=True)
        ref = torch.load(resolve(name, tmp_path / "serial").path / "model.pt", weights_only=True)
        assert all(torch.equal(ours["state_dict"][k], v) for k, v in ref["state_dict"].items())
        device = resolve(name, tmp_path / "jobs").manifest()["executions"][0]["device"]
        assert device == "cpu (1 cores)"  # its share of the machine
    spans = {n: _span(tmp_path / "jobs", n) for n in ("A", "A2")}
    assert spans["A"][0] < spans["A2"][1] and spans["A2"][0] < spans["A"][1]

    root = serial_root  # one pipeline's runs, changed below
    changed = _three_nets(tmp_path, root, source, bad=" --lr 0.002")
    plan = pipeline.load(changed, root)
    assert {n: s for n, (s, _) in pipeline.states(plan).items()} == {
        "data": "done", "A": "to run", "A2": "done", "B": "waiting for inputs"}
    again = vgg("pipeline", "run", str(changed), "--jobs", "2", "--runs-root", str(root))
    assert again.exit_code == 0 and "2 step(s) run" in again.output, again.output
    assert [len(versions(root / n)) for n in ("data", "A", "A2", "B")] == [1, 2, 1, 2]
    parents = resolve("B", root).manifest()["parents"]
    assert next(p for p in parents if p["run"] == "A")["version"] == "v002"


def _span(root: Path, name: str) -> tuple[float, float]:
    """When a run was opened (to the second, rounded down) and when it completed."""
    import datetime as dt

    version = resolve(name, root)
    started = dt.datetime.fromisoformat(version.manifest()["started"]).timestamp()
    return started, (version.path / "manifest.json").stat().st_mtime


def test_a_failed_step_stops_its_dependants_while_the_others_go_on(vgg, tmp_path) -> None:
    source = make_dataset(tmp_path / "tiny", SyntheticSpec(4, 6, 3, seed=2))
    path = _three_nets(tmp_path, tmp_path / "runs", source, bad=" --scale 1")
    result = vgg("pipeline", "run", str(path), "--jobs", "2", "--runs-root", str(tmp_path / "runs"))
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "failed A (exit 2); not starting B" in text
    assert "step(s) A (exit 2) failed, so 1 step(s) after them did not run" in text
    assert resolve("A2", tmp_path / "runs").status() == "complete"  # the others go on
    assert not (tmp_path / "runs" / "B").exists()


def test_the_demo_caps_the_smoke_recipes_nets_from_random_init_at_20_epochs() -> None:
    """`just demo` runs pipelines/smoke.toml with A, A-LRN and B-5x5 capped at 20 epochs for
    its time, the recipe at 30: the justfile's `--set` must name a variable the file defines
    and reach those three steps alone."""
    project = Path(__file__).parents[1]
    just_demo = project.joinpath("justfile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    (name, value), = re.findall(r'--set (\w+)="([^"]*)"', just_demo)
    shipped = project / "pipelines" / "smoke.toml"
    recipe = pipeline.load(shipped, Path("runs"))
    capped = pipeline.load(shipped, Path("runs"), overrides=((name, value),))

    def epochs(plan: pipeline.Pipeline) -> dict[str, str]:
        """Each training's --epochs, its [vars] filled in (run references left as they are)."""
        found = {}
        for step in plan.steps:
            text = pipeline.PLACEHOLDER.sub(
                lambda m: plan.variables.get(m[1], m[0]), step.command
            )
            if text.startswith("train"):
                found[step.name] = re.findall(r"--epochs (\d+)", text)[-1]
        return found

    demo, full = epochs(capped), epochs(recipe)
    scratch = ("A", "A-LRN", "B-5x5")
    assert {net: demo[net] for net in scratch} == dict.fromkeys(scratch, "20")
    changed = {net for net, cap in demo.items() if full[net] != cap}
    assert changed == set(scratch) and full["A"] == "30"


def test_dry_run_prints_the_waves_and_the_critical_path(vgg) -> None:
    shipped = Path(__file__).parents[1] / "pipelines" / "paper.toml"
    result = vgg("pipeline", "run", str(shipped), "--dry-run")
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "wave 1: data wave 2: A, A-LRN, B-5x5 wave 3: B, C, D, E, eval-A," in text
    assert ("critical path (7 steps, 33.5 h of time limits): data -> A -> D -> D-384 -> "
            "D-jitter -> eval-D-jitter -> fuse-dense") in text
    assert "1 node 99.0 h" in text


def test_jobs_split_the_cores_and_the_visible_gpus(monkeypatch) -> None:
    from vggcli.pipeline import local

    monkeypatch.setattr(local.os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4, 5, 6})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    parts = local.slots(3)
    assert [p.cores for p in parts] == [(0, 1, 2), (3, 4), (5, 6)]
    assert [p.gpus for p in parts] == [("0", "1", "2"), ("3", "4", "5"), ("6", "7")]
    env = parts[1].environment(shared=True)
    assert env["OMP_NUM_THREADS"] == "2" and env["CUDA_VISIBLE_DEVICES"] == "3,4,5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(VggError, match="3 concurrent steps are more than the 2 GPUs here"):
        local.slots(3)
    with pytest.raises(VggError, match="8 concurrent steps are more than the 7 cores here"):
        local.slots(8)


def test_too_many_jobs_is_one_line_naming_the_option_once(vgg) -> None:
    shipped = Path(__file__).parents[1] / "pipelines" / "smoke.toml"
    result = vgg("pipeline", "run", str(shipped), "--jobs", "1024", "--dry-run")
    assert result.exit_code == 2
    (line,) = [t for t in result.output.splitlines() if t.startswith("error")]
    assert line.startswith("error: --jobs: 1024 concurrent steps are more than the")
    assert line.count("--jobs") == 1
