"""What `vgg runs` shows: every version under a runs root with its kind, status and parents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggcli.artifacts import kind_of
from vggcli.runs import DAMAGED, RunVersion, list_runs, versions

__all__ = ["VersionRow", "rows"]


@dataclass(frozen=True)
class VersionRow:
    run: str
    version: str
    kind: str
    status: str
    started: str
    parents: str


def rows(root: Path) -> list[VersionRow]:
    return [_row(version) for run_dir in list_runs(root) for version in versions(run_dir)]


def _row(version: RunVersion) -> VersionRow:
    """One version; a damaged manifest is a row that says so, not an abort."""
    status = version.status()
    if status == DAMAGED:
        return VersionRow(version.name, version.path.name, "", str(status), "", "")
    manifest = version.manifest()
    parents = ", ".join(f"{p['run']}/{p['version']}" for p in manifest.get("parents", []))
    kind = kind_of(version)
    started = str(manifest.get("started", ""))
    return VersionRow(
        version.name, version.path.name, str(kind) if kind else "", str(status), started, parents
    )
