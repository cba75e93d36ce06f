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
the text of a variable (which `--set NAME=VALUE` may replace for one command). A step is
skipped when its run already has a complete version made by exactly the same resolved
command; an interrupted step is resumed by re-running its command (every `vgg` command
resumes its unfinished version).

This module is the plan only: the file, each step's state from the runs, the dependency graph
(waves of steps that can run at once, the critical path). It starts nothing; the runners
beside it (`local.py`, `slurm.py`) carry a plan out.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vggcli.errors import VggError
from vggcli.pipeline import resources
from vggcli.pipeline.resources import Resources
from vggcli.runs import COMPLETE, DAMAGED, RUNNING, RunVersion, latest_complete, versions

COMMANDS = ("preprocess", "train", "finetune-scale", "evaluate", "fuse")
PIPELINE_OPTIONS = ("--runs-root", "--name")  # set by the pipeline for every step
SCALES_OUT = ("train", "finetune-scale", "evaluate")  # the steps `--nproc` applies to
NAME = re.compile(r"[A-Za-z0-9_+-]+")  # a step's or a variable's, as {placeholders} spell it
PLACEHOLDER = re.compile(r"\{(" + NAME.pattern + r")\}")


@dataclass(frozen=True)
class Step:
    name: str
    command: str  # the text after `vgg`, with placeholders
    inputs: tuple[str, ...]  # steps it names
    resources: Resources = Resources()  # what it asks of a cluster (the Slurm runner)


@dataclass(frozen=True)
class Pipeline:
    path: Path
    steps: tuple[Step, ...]  # in dependency order
    variables: dict[str, str]
    runs_root: Path
    flip: bool = True  # False: every train step gets --no-flip (mirror-sensitive data)
    overrides: tuple[tuple[str, str], ...] = ()  # `--set NAME=VALUE`: [vars] replaced, in order

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise VggError(f"{self.path}: no step named '{name}'")


def load(path: Path, runs_root: Path | None = None, flip: bool = True,
         overrides: tuple[tuple[str, str], ...] = ()) -> Pipeline:
    """Parse and check a pipeline file; every problem names the file and the step.
    `overrides` replace variables of its [vars] (`--set`), so a variant of a pipeline (a
    longer budget, another lr) needs no copy of the file."""
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
    variables |= _overridden(path, variables, overrides)
    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise VggError(f"{path}: `step` must be [[step]] tables (each with name and run)")
    if not raw_steps:
        raise VggError(f"{path}: no [[step]] tables")
    settings = data.get("pipeline", {})
    if not isinstance(settings, dict) or not isinstance(settings.get("runs_root", ""), str):
        raise VggError(f"{path}: [pipeline] must be a table; its runs_root a path string")
    names = [str(s.get("name", "")) for s in raw_steps]
    defaults = resources.parse(data.get("resources", {}), Resources(), f"{path}: [resources]")
    steps = [_parse_step(path, s, set(names), variables, defaults) for s in raw_steps]
    if len(set(names)) != len(names):
        raise VggError(f"{path}: step names must be unique")
    root = runs_root or Path(settings.get("runs_root", "runs"))
    return Pipeline(path, _ordered(path, steps), variables, root, flip, overrides)


def _overridden(path: Path, variables: dict, overrides: tuple[tuple[str, str], ...]) -> dict:
    """The `--set` values, each naming a variable the file has: a misspelt name would
    otherwise change nothing, silently."""
    for name, _ in overrides:
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise VggError(f"{path} has no variable '{name}' to set (it has: {known})",
                           field="set")
    return dict(overrides)


def _parse_step(
    path: Path, raw: dict, names: set[str], variables: dict[str, str], defaults: Resources
) -> Step:
    name, command = raw.get("name"), raw.get("run")
    unknown = set(raw) - {"name", "run", "resources"}
    if unknown:
        raise VggError(f"{path}: step {name}: unknown key(s) {', '.join(sorted(unknown))} "
                       "(a step has name, run and resources)")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise VggError(f"{path}: every step needs a name of letters, digits, _ + - ({raw})")
    if not isinstance(command, str) or not command.split():
        raise VggError(f"{path}: step {name}: `run` must be a vgg command line")
    if command.split()[0] not in COMMANDS:
        raise VggError(
            f"{path}: step {name}: unknown command '{command.split()[0]}' "
            f"(one of {', '.join(COMMANDS)})"
        )
    owned = [a.split("=")[0] for a in command.split() if a.split("=")[0] in PIPELINE_OPTIONS]
    if owned:
        raise VggError(f"{path}: step {name}: {owned[0]} is the pipeline's "
                       "(its runs_root, the step's name); take it out of `run`")
    inputs = []
    for ref in PLACEHOLDER.findall(command):
        if ref in names:
            inputs.append(ref)
        elif ref not in variables:
            raise VggError(f"{path}: step {name}: {{{ref}}} is neither a step nor a variable")
    if name in inputs:
        raise VggError(f"{path}: step {name}: a step cannot use its own run")
    wanted = resources.parse(raw.get("resources", {}), defaults, f"{path}: step {name}")
    if wanted.nodes > 1 and command.split()[0] not in SCALES_OUT:
        raise VggError(f"{path}: step {name}: only {', '.join(SCALES_OUT)} run on several "
                       f"nodes, not {command.split()[0]} (set its resources.nodes = 1)")
    return Step(name, command, tuple(dict.fromkeys(inputs)), wanted)


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
        if version.status() == DAMAGED:
            continue  # listed by `vgg runs`; the step makes a new version beside it
        command = version.manifest().get("command", [])[1:]
        if command == args:
            status = version.status()
            if status == COMPLETE:
                return "done", version
            return ("interrupted: resumes" if status != RUNNING else "running"), version
    return "to run", None


def states(pipeline: Pipeline) -> dict[str, tuple[str, RunVersion | None]]:
    """Every step's state, in dependency order. A step counts as done only when its inputs
    are done too: after an input's command changed, the input will make a new version, so a
    step that matched the old version is waiting for it, not done."""
    found: dict[str, tuple[str, RunVersion | None]] = {}
    for step in pipeline.steps:
        if any(found[i][0] != "done" for i in step.inputs):
            found[step.name] = ("waiting for inputs", None)
        else:
            found[step.name] = state(pipeline, step)
    return found


def dependants(pipeline: Pipeline, name: str) -> list[str]:
    """Every step that needs `name`'s run, directly or through other steps."""
    found: list[str] = []
    for step in pipeline.steps:  # dependency order: inputs come first
        if any(i == name or i in found for i in step.inputs):
            found.append(step.name)
    return found


def waves(pipeline: Pipeline) -> list[list[str]]:
    """Steps grouped by how many steps must finish before them along their longest chain of
    inputs: each wave can run at once once the waves before it are done."""
    level: dict[str, int] = {}
    for step in pipeline.steps:
        level[step.name] = 1 + max((level[i] for i in step.inputs), default=-1)
    grouped: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for step in pipeline.steps:
        grouped[level[step.name]].append(step.name)
    return grouped


def critical_path(pipeline: Pipeline) -> tuple[list[str], int]:
    """The chain of steps with the largest sum of time limits (`resources.time`, minutes):
    the least wall time the pipeline can take, however many nodes run it."""
    finish: dict[str, int] = {}
    before: dict[str, str | None] = {}
    for step in pipeline.steps:
        prior = max(step.inputs, key=lambda i: finish[i], default=None)
        finish[step.name] = step.resources.time + (finish[prior] if prior else 0)
        before[step.name] = prior
    last: str | None = max(finish, key=lambda n: finish[n])
    total = finish[last]
    chain = []
    while last is not None:
        chain.append(last)
        last = before[last]
    return chain[::-1], total


def graph_summary(pipeline: Pipeline) -> list[str]:
    """The waves and the critical path, as lines for `--dry-run`."""
    grouped = waves(pipeline)
    lines = [f"wave {i + 1}: {', '.join(names)}" for i, names in enumerate(grouped)]
    chain, total = critical_path(pipeline)
    lines.append(f"critical path ({len(chain)} steps, {_hours(total)} of time limits): "
                 + " -> ".join(chain))
    widest = max(len(w) for w in grouped)
    counts = [k for k in (1, 2, 4, 8, 16) if k < widest] + [widest]
    lines.append("wall time if every step takes its time limit: " + ", ".join(
        f"{k} node{'s' if k > 1 else ''} {_hours(wall_time(pipeline, k))}" for k in counts))
    return lines


def _hours(minutes: int) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes} min"


def wall_time(pipeline: Pipeline, nodes: int) -> int:
    """Minutes the whole pipeline takes on `nodes` identical nodes if every step lasts its
    time limit: steps start in file order as soon as their inputs are done and enough nodes
    are free (list scheduling in file order: an estimate, not Slurm's exact order)."""
    finish: dict[str, int] = {}
    free_at = [0] * nodes  # when each node is next free
    for step in pipeline.steps:
        wanted = min(step.resources.nodes, nodes)
        ready = max((finish[i] for i in step.inputs), default=0)
        free_at.sort()
        start = max(ready, free_at[wanted - 1])
        finish[step.name] = start + step.resources.time
        for k in range(wanted):
            free_at[k] = finish[step.name]
    return max(finish.values())
