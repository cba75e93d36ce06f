"""Run directories: versions never overwritten, atomic outputs, locks, resume, lineage."""

from __future__ import annotations

import json
from multiprocessing import get_context
from pathlib import Path

import pytest

from vggcli.errors import VggError
from vggcli.runs import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    RunVersion,
    RunWriter,
    content_sha256,
    resolve,
    versions,
)


def _finish(root: Path, name: str, config: dict | None = None, **kwargs) -> RunVersion:
    with RunWriter.open(root, name, kind="model", config=config or {"a": 1}, **kwargs) as run:
        run.write_json("out.json", {"ok": True})
    return run.version


def test_rerun_makes_next_version_and_resolve_picks_latest_complete(tmp_path: Path) -> None:
    first, second = _finish(tmp_path, "D"), _finish(tmp_path, "D")
    assert (first.path.name, second.path.name) == ("v001", "v002")
    assert resolve("D", tmp_path) == second
    assert resolve(tmp_path / "D") == second
    assert resolve(tmp_path / "D" / "v001") == first  # naming a version pins it
    assert json.loads((first.path / "out.json").read_text()) == {"ok": True}


def test_manifest_records_outputs_with_hashes_and_provenance(tmp_path: Path) -> None:
    version = _finish(tmp_path, "D", config={"net": "D"}, device="cpu")
    manifest = version.manifest()
    assert manifest["status"] == COMPLETE and manifest["schema_version"] == 2
    assert manifest["content_sha256"] == content_sha256(manifest)
    assert manifest["config"] == {"net": "D"}
    assert manifest["provenance"]["device"] == "cpu"
    assert manifest["provenance"]["torch"] == "2.14.1"
    out = manifest["outputs"]["out.json"]
    assert out["size"] == (version.path / "out.json").stat().st_size
    assert len(out["sha256"]) == 64
    assert manifest["started"] and manifest["ended"]


def test_failure_marks_version_failed_and_leaves_no_output(tmp_path: Path) -> None:
    good = _finish(tmp_path, "D")
    with (
        pytest.raises(RuntimeError),
        RunWriter.open(tmp_path, "D", kind="model", config={"b": 2}) as run,
        run.writing("weights.pt") as tmp,
    ):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    failed = versions(tmp_path / "D")[-1]
    assert failed.status() == FAILED
    assert failed.manifest()["error"] == "killed mid-write"
    assert list(failed.path.glob("*weights*")) == []
    assert resolve("D", tmp_path) == good
    with pytest.raises(VggError, match="not complete"):
        resolve(failed.path)


def test_unlocked_running_version_reads_as_interrupted_and_resumes_with_same_config(
    tmp_path: Path,
) -> None:
    run = RunWriter.open(tmp_path, "D", kind="model", config={"lr": 0.01})
    run.write_json("half.json", {})
    # simulate a kill: the process is gone, so its lock is gone, the manifest says running
    run._lock.close()
    version = run.version
    assert version.status() == INTERRUPTED
    with pytest.raises(VggError, match="no complete version"):
        resolve("D", tmp_path)
    with RunWriter.open(tmp_path, "D", kind="model", config={"lr": 0.01}) as resumed:
        assert resumed.path == version.path and resumed.resumed
        assert resumed.has_output("half.json")
    assert version.status() == COMPLETE and version.manifest()["attempts"] == 2
    # a different config never resumes someone else's version
    assert _finish(tmp_path, "D", config={"lr": 0.1}).path.name == "v002"


def test_a_running_version_is_never_resumed_nor_duplicated_by_a_second_writer(tmp_path) -> None:
    """The same command twice at once: the second is refused while the first writes (two
    identical versions ran to completion before); another config gets its own version."""
    with RunWriter.open(tmp_path, "D", kind="model", config={}) as first:
        assert first.version.status() == "running"
        with pytest.raises(VggError, match="another process is writing D/v001 with the same"):
            RunWriter.open(tmp_path, "D", kind="model", config={})
        with RunWriter.open(tmp_path, "D", kind="model", config={"other": 1}) as second:
            assert second.path.name == "v002"
    assert [v.status() for v in versions(tmp_path / "D")] == [COMPLETE, COMPLETE]


def _open_and_finish(args: tuple[str, int]) -> str:
    root, i = args
    return _finish(Path(root), "E", config={"worker": i}).path.name


def test_concurrent_writers_never_share_a_version(tmp_path: Path) -> None:
    with get_context("fork").Pool(6) as pool:
        names = pool.map(_open_and_finish, [(str(tmp_path), i) for i in range(12)])
    assert len(set(names)) == 12
    assert all(v.status() == COMPLETE for v in versions(tmp_path / "E"))


def test_parents_record_version_and_manifest_hash(tmp_path: Path) -> None:
    parent = _finish(tmp_path, "A")
    child = _finish(tmp_path, "D", parents=[parent])
    (record,) = child.manifest()["parents"]
    assert record["run"] == "A" and record["version"] == "v001"
    assert record["manifest_sha256"] == parent.manifest_sha256()


def test_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VggError, match="no run "):
        resolve("nope", tmp_path)
    with pytest.raises(VggError, match="invalid run name"):
        RunWriter.open(tmp_path, "../x", kind="model", config={})


def test_a_run_name_holds_one_kind(tmp_path: Path) -> None:
    """`--name d` for a model when `d` holds a dataset is refused before a version is made,
    naming the option; the same kind still gets its next version."""
    with RunWriter.open(tmp_path, "d", kind="dataset", config={}):
        pass
    with pytest.raises(VggError, match="run 'd' holds dataset versions") as refused:
        RunWriter.open(tmp_path, "d", kind="model", config={})
    assert refused.value.field == "name" and refused.value.exit_code == 2
    assert [v.path.name for v in versions(tmp_path / "d")] == ["v001"]
    with RunWriter.open(tmp_path, "d", kind="dataset", config={"other": 1}) as writer:
        assert writer.path.name == "v002"


def test_a_command_refuses_a_name_of_another_kind(vgg, tiny_source: Path, runs_root) -> None:
    with RunWriter.open(runs_root, "base", kind="model", config={}):
        pass
    refused = vgg("preprocess", str(tiny_source), "--name", "base")
    assert refused.exit_code == 2, refused.output
    assert "--name: run 'base' holds model versions" in refused.output
    assert [v.path.name for v in versions(runs_root / "base")] == ["v001"]


def test_the_seal_is_what_a_reader_of_the_file_computes(tmp_path: Path) -> None:
    """Written from memory (int keys, tuples), checked from the file (string keys, lists):
    the same seal, so nothing written by us ever reads as damaged."""
    with RunWriter.open(tmp_path, "E", kind="evaluation", config={"scales": (256, 384)}) as run:
        run.set_result("by_scale", {9: 0.25, 10: 0.5})
    manifest = versions(tmp_path / "E")[0].manifest()
    assert manifest["results"]["by_scale"] == {"9": 0.25, "10": 0.5}
