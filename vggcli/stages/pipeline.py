"""Declarative, resumable pipelines: a TOML file of named `vgg` steps.

```toml
[vars]
net = "--width 0.25 --crop 64"

[[step]]
name = "A"
run = "train --net A --scale 80 --data {data} {net}"
```

Each step writes the run named after the step. `{step}` in a command is replaced by that
step's latest complete version (a pinned path, which also makes it a dependency); `{var}` by
the text of a variable. A step is skipped when its run already has a complete version made
by exactly the same resolved command; an interrupted step is resumed by re-running its
command (every `vgg` command resumes its unfinished version).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vggcli.errors import VggError, WorkFailed
from vggcli.runs import COMPLETE, RUNNING, UNREADABLE, RunVersion, latest_complete, versions
from vggcli.zygote import warm_launcher

COMMANDS = ("preprocess", "train", "finetune-scale", "evaluate", "fuse")
SCALES_OUT = ("train", "finetune-scale", "evaluate")  # the steps `--nproc` applies to
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_+-]+)\}")


@dataclass(frozen=True)
class Step:
    name: str
    command: str  # the text after `vgg`, with placeholders
    inputs: tuple[str, ...]  # steps it names


@dataclass(frozen=True)
class Pipeline:
    path: Path
    steps: tuple[Step, ...]  # in dependency order
    variables: dict[str, str]
    runs_root: Path
    flip: bool = True  # False: every train step gets --no-flip (mirror-sensitive data)


def load(path: Path, runs_root: Path | None = None, flip: bool = True) -> Pipeline:
    """Parse and check a pipeline file; every problem names the file and the step."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise VggError(f"{path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise VggError(f"{path}: TOML error: {exc}") from exc
    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        raise VggError(f"{path}: [vars] must be a table of name = value")
    variables = {str(k): str(v) for k, v in variables.items()}
    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise VggError(f"{path}: `step` must be [[step]] tables (each with name and run)")
    if not raw_steps:
        raise VggError(f"{path}: no [[step]] tables")
    settings = data.get("pipeline", {})
    if not isinstance(settings, dict) or not isinstance(settings.get("runs_root", ""), str):
        raise VggError(f"{path}: [pipeline] must be a table; its runs_root a path string")
    names = [str(s.get("name", "")) for s in raw_steps]
    steps = [_parse_step(path, s, set(names), variables) for s in raw_steps]
    if len(set(names)) != len(names):
        raise VggError(f"{path}: step names must be unique")
    root = runs_root or Path(settings.get("runs_root", "runs"))
    return Pipeline(path, _ordered(path, steps), variables, root, flip)


def _parse_step(path: Path, raw: dict, names: set[str], variables: dict[str, str]) -> Step:
    name, command = raw.get("name"), raw.get("run")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+-]+", name):
        raise VggError(f"{path}: every step needs a name of letters, digits, _ + - ({raw})")
    if not isinstance(command, str) or not command.split():
        raise VggError(f"{path}: step {name}: `run` must be a vgg command line")
    if command.split()[0] not in COMMANDS:
        raise VggError(
            f"{path}: step {name}: unknown command '{command.split()[0]}' "
            f"(one of {', '.join(COMMANDS)})"
        )
    inputs = []
    for ref in PLACEHOLDER.findall(command):
        if ref in names:
            inputs.append(ref)
        elif ref not in variables:
            raise VggError(f"{path}: step {name}: {{{ref}}} is neither a step nor a variable")
    if name in inputs:
        raise VggError(f"{path}: step {name}: a step cannot use its own run")
    return Step(name, command, tuple(dict.fromkeys(inputs)))


def _ordered(path: Path, steps: list[Step]) -> tuple[Step, ...]:
    """Dependency order, keeping file order among independent steps; cycles are errors."""
    done: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(i in {d.name for d in done} for i in s.inputs)]
        if not ready:
            cycle = ", ".join(s.name for s in pending)
            raise VggError(f"{path}: steps {cycle} depend on each other in a cycle")
        done.append(ready[0])
        pending.remove(ready[0])
    return tuple(done)


def resolve_args(pipeline: Pipeline, step: Step) -> list[str] | None:
    """The step's argv, or None while one of its inputs has no complete run yet."""
    text = step.command
    for ref in PLACEHOLDER.findall(text):
        if ref in pipeline.variables:
            replacement = pipeline.variables[ref]
        else:
            version = latest_complete(pipeline.runs_root / ref)
            if version is None:
                return None
            replacement = str(version.path)
        text = text.replace(f"{{{ref}}}", replacement)
    args = [*shlex.split(text), "--name", step.name]
    if not pipeline.flip and args[0] == "train":
        args.append("--no-flip")  # part of the command: a flipped run is not this step's
    return args


def state(pipeline: Pipeline, step: Step) -> tuple[str, RunVersion | None]:
    """done (a complete run made by this exact command), waiting, interrupted, or to run."""
    args = resolve_args(pipeline, step)
    if args is None:
        return "waiting for inputs", None
    for version in reversed(versions(pipeline.runs_root / step.name)):
        if version.status() == UNREADABLE:
            continue  # listed by `vgg runs`; the step makes a new version beside it
        command = version.manifest().get("command", [])[1:]
        if command == args:
            status = version.status()
            if status == COMPLETE:
                return "done", version
            return ("interrupted: resumes" if status != RUNNING else "running"), version
    return "to run", None


def run(
    pipeline: Pipeline, dry_run: bool, report: Callable[[str], None] = print, nproc: int = 1
) -> list[str]:
    """Run every step not yet done, in dependency order; return the names of those run.
    With `nproc` > 1 the training and evaluation steps run under torchrun; that is not part
    of a step's command (results do not depend on it), so finished steps stay finished.
    Steps run as children of a warm launcher (`zygote.py`), each its own process."""
    executed = []
    with contextlib.ExitStack() as stack:
        launcher = None
        for step in pipeline.steps:
            status, version = state(pipeline, step)
            if status == "done":
                report(f"[dim]skip[/] {step.name}: done ({version.label if version else ''})")
                continue
            args = resolve_args(pipeline, step)
            if dry_run:
                shown = " ".join(args) if args else step.command
                report(f"[bold]{status}[/] {step.name}: vgg {shown}")
                continue
            assert args is not None  # inputs ran before this step
            report(f"[bold]run[/] {step.name}: vgg {' '.join(args)}")
            env = {**os.environ, "VGG_RUNS": str(pipeline.runs_root)}
            launch = ["--nproc", str(nproc)] if nproc > 1 and args[0] in SCALES_OUT else []
            launcher = launcher or stack.enter_context(warm_launcher())
            code = launcher([*args, *launch], env)
            if code != 0:
                raise WorkFailed(
                    f"{pipeline.path}: step {step.name} failed (exit "
                    f"{code}); fix it and re-run to resume"
                )
            executed.append(step.name)
    return executed
