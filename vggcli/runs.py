"""Versioned run directories: the one place that creates, locks, resumes and resolves runs.

Layout: ``<runs-root>/<name>/v001/manifest.json`` plus the version's outputs. A finished
version is never written again; re-running a command makes the next version, unless the
latest version is unfinished, unlocked and was started with the same config, in which case
the command resumes it. See docs/runs.md.

This module needs no torch: callers pass the device string in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from vggcli import integrity
from vggcli.errors import VggError
from vggcli.files import atomic_write_json, overwrite_in_place, sha256_file

SCHEMA_VERSION = 2  # 2: the manifest carries its own content_sha256 (1: written before it)
SEAL = "content_sha256"
MAX_NAME = 100  # a run name is a folder name (255 bytes at most on most filesystems)
MANIFEST = "manifest.json"
LOCK = ".lock"
VERSION_PREFIX = "v"


class Status(StrEnum):
    """A version's state; stored as its plain string in the manifest."""

    COMPLETE = "complete"
    RUNNING = "running"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # 'running' in the manifest, but nobody holds the lock
    DAMAGED = "damaged"  # manifest missing, garbled, of the wrong shape or edited


COMPLETE, RUNNING, FAILED, INTERRUPTED, DAMAGED = Status

# The manifest fields every reader relies on, and their JSON types.
_FIELD_TYPES: dict[str, type] = {"status": str, "config": dict, "outputs": dict}
_OPTIONAL_FIELD_TYPES: dict[str, type] = {"results": dict, "parents": list, "kind": str}


def content_sha256(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's canonical JSON (sorted keys, compact), its seal left out:
    what the manifest records about itself, so an edit to a statistic, a config or a status
    is found by every reader."""
    content = {key: value for key, value in manifest.items() if key != SEAL}
    as_read = json.loads(json.dumps(content))  # as a reader sees it: int keys become strings
    canonical = json.dumps(as_read, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sealed(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its content_sha256 (re)computed."""
    return {**manifest, SEAL: content_sha256(manifest)}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _try_lock(fh: BinaryIO) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _version_number(path: Path) -> int | None:
    digits = path.name[len(VERSION_PREFIX) :]
    if path.name.startswith(VERSION_PREFIX) and digits.isdigit():
        return int(digits)
    return None


@dataclass(frozen=True)
class RunVersion:
    """One version of a run, e.g. ``runs/imagenet/v002``."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def number(self) -> int:
        number = _version_number(self.path)
        assert number is not None, self.path
        return number

    @property
    def label(self) -> str:
        """How users and manifests refer to this version: ``imagenet/v002``."""
        return f"{self.name}/{self.path.name}"

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked against its own content_sha256 and for the shape every
        reader relies on; a one-line error, exit 1, saying what is damaged."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise self._damaged("it is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged(f"not readable JSON ({exc})") from exc
        if (problem := _shape_problem(manifest) or _seal_problem(manifest)) is not None:
            raise self._damaged(problem)
        return manifest

    def _damaged(self, problem: str) -> VggError:
        return VggError(
            f"manifest of {self.path} is damaged: {problem}; restore it, or move the version "
            "aside and re-run its command", exit_code=1)

    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def status(self) -> Status:
        """complete / failed / running, interrupted when 'running' but nobody holds the lock,
        damaged when the manifest is missing, garbled, of the wrong shape or edited."""
        try:
            status = Status(self.manifest()["status"])
        except VggError:
            return DAMAGED
        if status != RUNNING:
            return status
        with open(self.path / LOCK, "ab") as fh:
            if _try_lock(fh):
                fcntl.flock(fh, fcntl.LOCK_UN)
                return INTERRUPTED
        return RUNNING

    def output(self, name: str) -> Path:
        """Path of a recorded output; a clear error if the run never finished writing it."""
        if name not in self.manifest().get("outputs", {}):
            raise VggError(f"{self.label} has no output '{name}'")
        return self.path / name

    def results(self) -> dict[str, Any]:
        return self.manifest().get("results", {})

    def as_parent(self) -> dict[str, Any]:
        """The lineage record a child manifest stores about this version."""
        return {
            "path": str(self.path.resolve()),
            "run": self.name,
            "version": self.path.name,
            "manifest_sha256": self.manifest_sha256(),
        }


def _shape_problem(manifest: Any) -> str | None:
    """What makes a parsed manifest unusable, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for field, kind in _FIELD_TYPES.items():
        if not isinstance(manifest.get(field), kind):
            return f"'{field}' missing or not a JSON {kind.__name__}"
    for field, kind in _OPTIONAL_FIELD_TYPES.items():
        if field in manifest and not isinstance(manifest[field], kind):
            return f"'{field}' is not a JSON {kind.__name__}"
    if manifest["status"] not in (COMPLETE, FAILED, RUNNING):  # what a writer stores
        return f"status '{manifest['status'][:20]}' is not complete, failed or running"
    for name, record in manifest["outputs"].items():
        if not _is_record(record, {"size": int, "sha256": str}):
            return f"output '{name}' is not a record of size and sha256"
    parent_fields = {"run": str, "version": str, "path": str, "manifest_sha256": str}
    if not all(_is_record(p, parent_fields) for p in manifest.get("parents", [])):
        return "a parent is not a record of run, version, path and manifest_sha256"
    return None


def _seal_problem(manifest: dict[str, Any]) -> str | None:
    """Why a manifest's content does not match its seal, or None (schema 1 had no seal)."""
    recorded = manifest.get(SEAL)
    if recorded is None:
        old = isinstance(manifest.get("schema_version"), int) and manifest["schema_version"] < 2
        return None if old else f"no {SEAL}"
    if recorded != content_sha256(manifest):
        return f"its content does not match its {SEAL} (edited after it was written)"
    return None


def _refuse_other_kinds(name: str, kind: str, existing: list[RunVersion]) -> None:
    """One kind per run name: `--name d` for a model when `d` holds a dataset would leave a
    run that every later command misreads. (Damaged versions and those from before `kind`
    was recorded say nothing.)"""
    for version in existing:
        try:
            other = version.manifest().get("kind")
        except VggError:
            continue
        if other is not None and other != str(kind):
            raise VggError(f"run '{name}' holds {other} versions, so it cannot hold a {kind}; "
                           "choose another name", field="name")


def _same_config(manifest: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a version was started with `config`, compared as its manifest stores it."""
    return manifest.get("config") == json.loads(json.dumps(config))


def _refuse_a_twin(existing: list[RunVersion], config: dict[str, Any]) -> None:
    """Two identical commands at once would each train the same thing as its own version:
    the second is refused while the first writes (its version locked, same config)."""
    if not existing or existing[-1].status() != RUNNING:
        return
    if _same_config(existing[-1].manifest(), config):
        raise VggError(
            f"another process is writing {existing[-1].label} with the same config; wait for "
            "it to finish (or stop it and re-run this command to resume it)", exit_code=1)


def _is_latest(path: Path, existing: list[RunVersion]) -> bool:
    return bool(existing) and existing[-1].path.resolve() == path.resolve()


def _not_resumable(version: RunVersion, existing: list[RunVersion]) -> str:
    """Why `--resume` of `version` was refused, decided under the run's lock."""
    if not _is_latest(version.path, existing):
        return f"{version.label} is no longer the latest version of {version.name}"
    status = version.status()
    if status == RUNNING:
        return f"{version.label} is being written by another process"
    if status in (COMPLETE, DAMAGED):
        return f"{version.label} is {status}"
    return f"{version.label} was started with another config"


def _is_record(value: Any, fields: dict[str, type]) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(k), t) for k, t in fields.items())


def check_name(name: str) -> None:
    """A run name is one folder inside the runs root: no path, nothing hidden, short enough
    for any filesystem (a 300-character name was a raw OS error)."""
    if not name or "/" in name or name.startswith(".") or len(name) > MAX_NAME:
        raise VggError(f"invalid run name '{name[:40]}{'...' if len(name) > 40 else ''}': "
                       f"up to {MAX_NAME} characters, no '/', not starting with '.'",
                       field="name")


def versions(run_dir: Path) -> list[RunVersion]:
    """All versions of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _version_number(p) is not None]
    return [RunVersion(p) for p in sorted(found, key=_version_number)]


def latest_complete(run_dir: Path) -> RunVersion | None:
    """The newest complete version of a run, or None."""
    return next((v for v in reversed(versions(run_dir)) if v.status() == COMPLETE), None)


def list_runs(root: Path) -> list[Path]:
    """Run directories under a runs root (those holding at least one version)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and versions(p))


def locate(ref: str | Path, root: Path | None = None) -> Path:
    """Where a run reference points: inside the runs root first (`D`, `D/v002`), so that
    `--data imagenet` names the dataset run even beside the `imagenet/` source folder; a
    path outside the root only when it is a run or a run version."""
    path = Path(ref)
    if root is not None and not path.is_absolute() and (root / path).exists():
        return root / path
    if versions(path) or (_version_number(path) is not None and (path / MANIFEST).exists()):
        return path
    where = f" under {root}" if root is not None else ""
    hint = f" ({path} exists but is not a run directory)" if path.exists() else ""
    raise VggError(f"no run '{ref}'{where}{hint}")


def resolve(ref: str | Path, root: Path | None = None) -> RunVersion:
    """Turn what a user typed into a complete version.

    ``runs/D`` (or just ``D``, looked up under the runs root) names the latest complete
    version; ``runs/D/v002`` pins one, which must be complete.
    """
    path = locate(ref, root)
    if _version_number(path) is not None and path.is_dir() and not versions(path):
        version = RunVersion(path)
        if (status := version.status()) == DAMAGED:
            version.manifest()  # raises, saying what is damaged
        if status != COMPLETE:
            raise VggError(f"{path} is {status}, not complete; re-run its command to finish it")
        return version
    for version in reversed(versions(path)):
        status = version.status()
        if status == COMPLETE:
            return version
        if status == DAMAGED:  # never passed over for an older version: say what is wrong
            version.manifest()
    raise VggError(f"{path} has no complete version; re-run its command to finish it")


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(device: str) -> dict[str, Any]:
    """What produced a run: tool, libraries, machine."""
    return {
        "tool_version": _package_version("vgg"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "torchvision": _package_version("torchvision"),
        "ffcv": _package_version("ffcv"),
        "numpy": _package_version("numpy"),
        "device": device,
        "host": platform.node(),
    }


class RunWriter:
    """An open version being written by this process; use as a context manager.

    Holds an exclusive lock on the version for its lifetime, keeps the manifest current
    after every change, and marks the version complete only when the block exits cleanly.
    """

    def __init__(self, version: RunVersion, lock: BinaryIO, manifest: dict[str, Any]) -> None:
        self.version = version
        self._lock = lock
        self._manifest = manifest
        self._saved = json.dumps(manifest)  # what manifest.json holds: the full-disk fallback

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: Path,
        name: str,
        *,
        kind: str,
        config: dict[str, Any],
        parents: list[RunVersion] = (),  # type: ignore[assignment]
        device: str = "cpu",
        execution: dict[str, Any] | None = None,
        argv: list[str] | None = None,
        resume: bool = True,
        resume_only: Path | None = None,
    ) -> RunWriter:
        """Resume the latest unfinished version started with this config, else make a new one
        (with `resume_only`, a version's path: resume exactly that one or refuse; `--resume`
        never starts a new version).

        `kind` (dataset, model, ...: see artifacts.py) is recorded so readers need not guess;
        `execution` (world size, backend, nodes: runtime facts, not config) is recorded for
        every attempt, since a resumed run may run on other machines."""
        execution = {"device": device, **(execution or {})}
        check_name(name)
        run_dir = root / name
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / LOCK, "ab") as run_lock:
            fcntl.flock(run_lock, fcntl.LOCK_EX)  # serialise version choice per run name
            existing = versions(run_dir)
            _refuse_other_kinds(name, kind, existing)
            if resume_only is None:
                _refuse_a_twin(existing, config)
            if resume and (resume_only is None or _is_latest(resume_only, existing)):
                found = cls._resumable(run_dir, config, execution)
                if found is not None:
                    return found
            if resume_only is not None:
                why = _not_resumable(RunVersion(resume_only), existing)
                raise VggError(f"{why}; nothing was started")
            return cls._create(run_dir, kind, config, parents, execution, argv or sys.argv)

    @classmethod
    def _resumable(
        cls, run_dir: Path, config: dict[str, Any], execution: dict[str, Any]
    ) -> RunWriter | None:
        existing = versions(run_dir)
        if not existing or existing[-1].status() not in (INTERRUPTED, FAILED):
            return None
        latest = existing[-1]
        manifest = latest.manifest()
        if not _same_config(manifest, config):
            return None
        lock = open(latest.path / LOCK, "ab")  # noqa: SIM115 - held for the writer's life
        if not _try_lock(lock):
            lock.close()
            return None
        manifest["status"] = RUNNING
        manifest["attempts"] = manifest.get("attempts", 1) + 1
        manifest["resumed_at"] = [*manifest.get("resumed_at", []), _now()]
        manifest["executions"] = [*manifest.get("executions", []), execution]
        manifest.pop("error", None)
        writer = cls(latest, lock, manifest)
        writer._save()
        return writer

    @classmethod
    def _create(
        cls,
        run_dir: Path,
        kind: str,
        config: dict[str, Any],
        parents: list[RunVersion],
        execution: dict[str, Any],
        argv: list[str],
    ) -> RunWriter:
        existing = versions(run_dir)
        number = existing[-1].number + 1 if existing else 1
        while True:  # exclusive mkdir: a concurrent writer can never get the same version
            path = run_dir / f"{VERSION_PREFIX}{number:03d}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                number += 1
        lock = open(path / LOCK, "ab")  # noqa: SIM115 - held for the writer's life
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "run": run_dir.name,
            "version": path.name,
            "kind": str(kind),
            "status": RUNNING,
            "command": argv,
            "config": config,
            "provenance": provenance(execution["device"]),
            "executions": [execution],
            "parents": [p.as_parent() for p in parents],
            "started": _now(),
            "ended": None,
            "attempts": 1,
            "outputs": {},
            "results": {},
        }
        writer = cls(RunVersion(path), lock, manifest)
        writer._save()
        return writer

    # -- writing ---------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.version.path

    @property
    def resumed(self) -> bool:
        return self._manifest.get("attempts", 1) > 1

    def _save(self) -> None:
        self._manifest = sealed(self._manifest)
        atomic_write_json(self.path / MANIFEST, self._manifest)
        self._saved = json.dumps(self._manifest)

    def recorded(self) -> list[str]:
        """Names of the outputs finished and recorded so far, whatever is on disk now."""
        return sorted(self._manifest["outputs"])

    def has_output(self, name: str) -> bool:
        """True when `name` was recorded and the file on disk still has the recorded hash."""
        record = self._manifest["outputs"].get(name)
        if record is None:
            return False
        damage = integrity.damage(self.path / name, record, self.version.label, always_hash=True)
        return damage is None

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """Yield a temporary path to write `name` to; rename and record it on success only."""
        target = self.path / name
        tmp = target.with_name(f".{name}.partial")
        tmp.unlink(missing_ok=True)
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        self.record_output(name)

    def write_json(self, name: str, obj: Any) -> None:
        with self.writing(name) as tmp:
            tmp.write_text(json.dumps(obj, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        with self.writing(name) as tmp:
            tmp.write_text(text)

    def record_output(self, name: str) -> None:
        target = self.path / name
        self._manifest["outputs"][name] = {
            "size": target.stat().st_size,
            "sha256": sha256_file(target),
        }
        self._save()

    def remove_output(self, name: str) -> None:
        """Drop a scratch output (e.g. the resume checkpoint) once it is no longer needed."""
        self._manifest["outputs"].pop(name, None)
        self._save()
        (self.path / name).unlink(missing_ok=True)

    def set_aside(self, name: str) -> Path:
        """Take a damaged output out of the record, its file kept beside as NAME.damaged
        (for a look, never read again)."""
        aside = self.path / f"{name}.damaged"
        if (self.path / name).exists():
            os.replace(self.path / name, aside)
        self._manifest["outputs"].pop(name, None)
        self._save()
        return aside

    def set_result(self, key: str, value: Any) -> None:
        """Store a small result (statistics, metrics summary) in the manifest."""
        self._manifest["results"][key] = value
        self._save()

    def results(self) -> dict[str, Any]:
        return self._manifest["results"]

    def _save_failure(self) -> None:
        """Mark the version failed even on a full disk: when there is no room for the
        temporary copy, rewrite the last manifest that landed, with the failed status and a
        short reason, in its own blocks, compacted (shorter than the indented file), so
        the version never stays 'running'."""
        try:
            self._save()
        except OSError:
            last = json.loads(self._saved)  # not the change that failed to land
            last.update({key: self._manifest[key] for key in ("status", "ended")})
            last["error"] = self._manifest["error"][:200]
            last = sealed(last)
            compact = json.dumps(last, separators=(",", ":")) + "\n"
            overwrite_in_place(self.path / MANIFEST, compact.encode())

    # -- closing ---------------------------------------------------------------------
    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self._manifest["status"] = COMPLETE
        else:
            self._manifest["status"] = FAILED
            self._manifest["error"] = str(exc) or exc_type.__name__
        self._manifest["ended"] = _now()
        try:
            if exc_type is None:
                self._save()
            else:
                self._save_failure()
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
