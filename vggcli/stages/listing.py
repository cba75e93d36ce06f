"""What `vgg runs` shows: every version under a runs root with its kind, status and parents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggcli.artifacts import kind_of
from vggcli.runs import list_runs, versions

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
    found = []
    for run_dir in list_runs(root):
        for version in versions(run_dir):
            manifest = version.manifest()
            parents = ", ".join(f"{p['run']}/{p['version']}" for p in manifest.get("parents", []))
            kind = kind_of(version)
            found.append(
                VersionRow(
                    run_dir.name,
                    version.path.name,
                    str(kind) if kind else "",
                    str(version.status()),
                    str(manifest.get("started", "")),
                    parents,
                )
            )
    return found
