"""What a pipeline step asks of a cluster: nodes, GPUs, CPUs, memory, time, where to run, how
often it may be requeued. Pipeline-wide defaults in `[resources]`, per-step overrides in the
step's own `resources` table; every key checked when the file is loaded, before anything is
submitted."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vggcli.errors import VggError

TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")  # Slurm's D-HH:MM:SS forms


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None  # None: the partition's default
    time: int = 60  # minutes
    partition: str | None = None
    account: str | None = None
    requeues: int = 3  # preemptions and time limits survived before the step counts as failed
    sbatch: dict[str, str] = field(default_factory=dict)  # any other sbatch option

    @property
    def processes_per_node(self) -> int:
        """One training process per GPU; on CPU nodes one process."""
        return max(1, self.gpus_per_node)


_COUNTS = {"nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "requeues": 0}  # key: minimum
_TEXTS = ("partition", "account")
KEYS = tuple(f.name for f in fields(Resources))


def parse(raw: Any, base: Resources, where: str) -> Resources:
    """`base` with the keys of the TOML table `raw` applied; `where` names the table in errors."""
    if not isinstance(raw, dict):
        raise VggError(f"{where}: resources must be a table of key = value ({', '.join(KEYS)})")
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KEYS:
            raise VggError(f"{where}: unknown resource '{key}' (known: {', '.join(KEYS)})")
        changes[key] = _value(key, value, where)
    if "sbatch" in changes:  # a step's options add to the pipeline's, key by key
        changes["sbatch"] = {**base.sbatch, **changes["sbatch"]}
    return replace(base, **changes)


def _value(key: str, value: Any, where: str) -> Any:
    if key in _COUNTS:
        if not isinstance(value, int) or isinstance(value, bool) or value < _COUNTS[key]:
            raise VggError(f"{where}: {key} must be an integer >= {_COUNTS[key]}, not {value!r}")
        return value
    if key == "mem_gb":
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e6:
            raise VggError(f"{where}: mem_gb must be a positive number of GB, not {value!r}")
        return float(value)
    if key == "time":
        return minutes(value, where)
    if key in _TEXTS:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.,-]+", value):
            raise VggError(f"{where}: {key} must be a Slurm name, not {value!r}")
        return value
    if not isinstance(value, dict) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) or v is True for v in value.values()
    ):
        raise VggError(f"{where}: sbatch must be a table of option = value (e.g. qos = \"high\")")
    return {str(k): v for k, v in value.items()}


def minutes(value: Any, where: str) -> int:
    """A time limit as minutes: an integer, or Slurm's "HH:MM:SS", "D-HH", "D-HH:MM:SS"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = TIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise VggError(f"{where}: time must be minutes or \"D-HH:MM:SS\", not {value!r}")
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(1):  # D-HH[:MM[:SS]]
        total = days * 1440 + first * 60 + second + (third > 0)
    elif match.group(4):  # HH:MM:SS
        total = first * 60 + second + (third > 0)
    elif match.group(3):  # MM:SS
        total = first + (second > 0)
    else:  # MM
        total = first
    if total <= 0:
        raise VggError(f"{where}: time must be positive, not {value!r}")
    return total
