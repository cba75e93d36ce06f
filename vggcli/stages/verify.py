"""`vgg verify RUN`: every recorded file of a run version and of its parents, hashed.

Commands verify what they read as they read it (integrity.py); this checks a whole lineage
on demand (after copying runs between machines, or before a long job), whatever
--no-verify says. Every manifest is checked against its own content_sha256, and a parent's
against the hash its child recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vggcli import integrity
from vggcli.artifacts import parent
from vggcli.errors import VggError
from vggcli.runs import MANIFEST, RunVersion, resolve

__all__ = ["Checked", "run"]


@dataclass(frozen=True)
class Checked:
    """One file of the lineage: None as problem when it is what its run recorded."""

    label: str
    name: str
    size: int | None
    problem: str | None = None


def run(ref: str, root: Path) -> list[Checked]:
    """Every file of `ref` (a complete version) and of all its ancestors, checked."""
    return list(_lineage(resolve(ref, root), root, set()))


def _lineage(version: RunVersion, root: Path, seen: set[Path]) -> Iterator[Checked]:
    if version.path.resolve() in seen:
        return
    seen.add(version.path.resolve())
    manifest = version.manifest()  # its own seal checked, else a VggError
    yield Checked(version.label, MANIFEST, (version.path / MANIFEST).stat().st_size)
    for name, record in sorted(manifest["outputs"].items()):
        found = integrity.damage(version.path / name, record, version.label, always_hash=True)
        yield Checked(version.label, name, record.get("size"), found and found.problem)
    for index, record in enumerate(manifest.get("parents", [])):
        yield from _parent(version, index, record, root, seen)


def _parent(
    child: RunVersion, index: int, record: dict, root: Path, seen: set[Path]
) -> Iterator[Checked]:
    found = parent(child, index, root, checked=False)
    label = f"{record['run']}/{record['version']}"
    try:
        changed = found.manifest_sha256() != record["manifest_sha256"]
    except OSError:
        yield Checked(label, MANIFEST, None, f"is missing (a parent of {child.label})")
        return
    if changed:
        yield Checked(label, MANIFEST, None, f"changed since {child.label} recorded it")
    try:
        yield from _lineage(found, root, seen)
    except VggError as exc:
        yield Checked(label, MANIFEST, None, str(exc))
