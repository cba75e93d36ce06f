"""`vgg preprocess` on real files through real FFCV: round trip, statistics, layouts, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, make_dataset, vgg_process
from vggcli.data.beton import read_samples
from vggcli.data.synthetic import SyntheticSpec, wnid
from vggcli.runs import COMPLETE, INTERRUPTED, resolve, versions

RAW = ("--write-mode", "raw")  # lossless, so decoded pixels equal what was scanned


def _index(version_path: Path, split: str) -> list[dict]:
    with open(version_path / f"{split}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_round_trip_counts_labels_and_class_order(vgg, tiny_source: Path, runs_root: Path) -> None:
    result = vgg("preprocess", str(tiny_source), *RAW)
    assert result.exit_code == 0, result.output
    version = resolve("imagenet", runs_root)
    assert f"run directory: {version.path}" in result.output.replace("\n", "")
    classes = json.loads((version.path / "classes.json").read_text())
    assert [c["wnid"] for c in classes] == sorted(wnid(c) for c in range(TINY.classes))
    assert classes[0]["name"] == "circle"  # from LOC_synset_mapping.txt
    for split, per_class in (("train", TINY.train_per_class), ("val", TINY.val_per_class)):
        samples = read_samples(version.output(f"{split}.beton"))
        rows = _index(version.path, split)
        assert len(samples) == len(rows) == TINY.classes * per_class
        for (image, label), row in zip(samples, rows, strict=True):
            assert label == int(row["label"])
            assert row["wnid"] == classes[label]["wnid"]
            assert row["path"].startswith(f"{split}/")
            source = np.asarray(Image.open(tiny_source / row["path"]).convert("RGB"))
            assert np.array_equal(image, source)  # raw mode: exact pixels, exact order
    # train labels come from the folder name
    assert all(r["path"].split("/")[1] == r["wnid"] for r in _index(version.path, "train"))
    assert version.results()["counts"] == {"train": 24, "val": 12}


def test_mean_and_covariance_equal_numpy_over_decoded_images(vgg, tiny_source, runs_root) -> None:
    assert vgg("preprocess", str(tiny_source), *RAW, "--max-side", "200").exit_code == 0
    version = resolve("imagenet", runs_root)
    images = [image for image, _ in read_samples(version.output("train.beton"))]
    assert max(max(i.shape[:2]) for i in images) <= 200  # statistics describe stored pixels
    pixels = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
    stats = version.results()["colour_statistics"]
    np.testing.assert_allclose(stats["mean_rgb"], pixels.mean(axis=0), rtol=1e-12)
    cov = np.cov(pixels, rowvar=False, bias=True)
    np.testing.assert_allclose(stats["covariance_rgb"], cov, rtol=1e-9)
    values, vectors = np.array(stats["eigenvalues"]), np.array(stats["eigenvectors"])
    assert np.all(np.diff(values) <= 0)
    for value, vector in zip(values, vectors, strict=True):
        np.testing.assert_allclose(cov @ vector, value * vector, atol=1e-6 * values[0])


def _val_labels_by_content(version_path: Path) -> list[tuple[str, int]]:
    samples = read_samples(version_path / "val.beton")
    return sorted((hashlib.sha256(image.tobytes()).hexdigest(), label) for image, label in samples)


def test_all_val_layouts_give_the_same_labels(vgg, tmp_path: Path, runs_root: Path) -> None:
    found = {}
    for layout in ("folders", "loc", "devkit"):
        spec = SyntheticSpec(classes=4, train_per_class=2, val_per_class=3, val_layout=layout)
        source = make_dataset(tmp_path / layout, spec)
        result = vgg("preprocess", str(source), *RAW)
        assert result.exit_code == 0, result.output
        found[layout] = _val_labels_by_content(resolve(layout, runs_root).path)
    assert found["folders"] == found["loc"] == found["devkit"]
    assert len(found["folders"]) == 12


def test_devkit_text_synset_order_is_honoured(vgg, tmp_path: Path, runs_root: Path) -> None:
    spec = SyntheticSpec(classes=3, train_per_class=2, val_per_class=2, val_layout="devkit")
    source = make_dataset(tmp_path / "dk", spec)
    data = source / "ILSVRC2012_devkit_t12" / "data"
    (data / "meta.mat").unlink()
    assert "synset order" in vgg("preprocess", str(source)).output
    order = tmp_path / "order.txt"
    order.write_text("".join(f"{wnid(c)}\n" for c in reversed(range(3))))
    result = vgg("preprocess", str(source), "--synsets", str(order), *RAW)
    assert result.exit_code == 0, result.output
    folders = make_dataset(tmp_path / "ref", SyntheticSpec(3, 2, 2, val_layout="folders"))
    assert vgg("preprocess", str(folders), *RAW).exit_code == 0
    assert _val_labels_by_content(resolve("dk", runs_root).path) == _val_labels_by_content(
        resolve("ref", runs_root).path
    )


def test_second_run_makes_a_new_version(vgg, tiny_source, runs_root) -> None:
    assert vgg("preprocess", str(tiny_source)).exit_code == 0
    assert vgg("preprocess", str(tiny_source)).exit_code == 0
    assert [v.path.name for v in versions(runs_root / "imagenet")] == ["v001", "v002"]
    assert resolve("imagenet", runs_root).path.name == "v002"


def test_subset_takes_evenly_spaced_classes_and_first_images(vgg, tiny_source, runs_root) -> None:
    result = vgg(
        "preprocess",
        str(tiny_source),
        "--classes",
        "2",
        "--train-per-class",
        "3",
        "--val-per-class",
        "1",
        "--name",
        "smoke",
    )
    assert result.exit_code == 0, result.output
    version = resolve("smoke", runs_root)
    assert [c["wnid"] for c in json.loads((version.path / "classes.json").read_text())] == [
        wnid(0),
        wnid(2),
    ]
    assert version.results()["counts"] == {"train": 6, "val": 2}
    train = _index(version.path, "train")
    assert [r["path"].rsplit("_", 1)[1] for r in train[:3]] == ["0.JPEG", "1.JPEG", "2.JPEG"]


def _add_awkward_files(source: Path) -> Path:
    """ILSVRC-2012's real oddities: CMYK JPEGs, PNGs named .JPEG, grayscale, plus broken files."""
    folder = source / "train" / wnid(0)
    good = Image.open(next(folder.glob("*.JPEG"))).convert("RGB")
    good.convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG")
    good.save(folder / "png_named.JPEG", format="PNG")
    good.convert("L").save(folder / "gray.JPEG", format="JPEG")
    data = (folder / "cmyk.JPEG").read_bytes()
    (folder / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (folder / "garbage.JPEG").write_bytes(os.urandom(2000))
    (folder / "dangling.JPEG").symlink_to(folder / "does-not-exist.JPEG")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_awkward_images_are_converted_and_broken_ones_skipped_and_listed(
    vgg, tiny_source, runs_root
) -> None:
    folder = _add_awkward_files(tiny_source)
    result = vgg("preprocess", str(tiny_source), *RAW, "--max-skipped-fraction", "0.2")
    assert result.exit_code == 0, result.output
    version = resolve("imagenet", runs_root)
    skipped = {Path(s["path"]).name for s in version.results()["train_skipped"]}
    assert skipped == {"truncated.JPEG", "garbage.JPEG", "dangling.JPEG"}
    assert version.results()["ignored_files"] == [f"train/{wnid(0)}/notes.txt"]
    rows = {Path(r["path"]).name: int(r["index"]) for r in _index(version.path, "train")}
    samples = read_samples(version.output("train.beton"))
    assert len(samples) == TINY.classes * TINY.train_per_class + 3
    for name, mode in (("cmyk.JPEG", "CMYK"), ("png_named.JPEG", "RGB"), ("gray.JPEG", "L")):
        with Image.open(folder / name) as original:
            assert original.mode == mode
            expected = np.asarray(original.convert("RGB"))
        assert np.array_equal(samples[rows[name]][0], expected)
    formats = version.results()["train_formats"]
    assert formats["JPEG/CMYK"] == 1 and formats["PNG/RGB"] == 1 and formats["JPEG/L"] == 1


def test_too_many_undecodable_images_fail_without_a_complete_version(vgg, tiny_source, runs_root):
    _add_awkward_files(tiny_source)
    result = vgg("preprocess", str(tiny_source))
    assert result.exit_code == 1
    assert "could not be decoded" in result.output and "Traceback" not in result.output
    assert [v.status() for v in versions(runs_root / "imagenet")] == ["failed"]
    assert not (runs_root / "imagenet" / "v001" / "train.beton").exists()


def _first_val_image_of(source: Path, class_index: int) -> str:
    """The first (by name) flat val image that LOC_val_solution.csv gives this class."""
    with open(source / "LOC_val_solution.csv", newline="") as fh:
        rows = sorted(
            r["ImageId"] for r in csv.DictReader(fh) if wnid(class_index) in r["PredictionString"]
        )
    return f"val/{rows[0]}.JPEG"


@pytest.mark.parametrize("val_layout", ["loc", "devkit"])
def test_missing_val_images_are_listed_counted_and_summarised(
    vgg, tmp_path, runs_root, val_layout
) -> None:
    source = make_dataset(tmp_path / val_layout, SyntheticSpec(4, 2, 3, val_layout=val_layout))
    gone = "val/ILSVRC2012_val_00000005.JPEG"
    (source / gone).unlink()
    result = vgg("preprocess", str(source), *RAW, "--max-skipped-fraction", "0.1")
    assert result.exit_code == 0, result.output
    version = resolve(val_layout, runs_root)
    results = version.results()
    assert results["val_skipped"] == [{"path": gone, "reason": "missing"}]
    assert results["train_skipped"] == []
    assert results["counts"] == {"train": 8, "val": 11}
    assert results["skipped_counts"] == {
        "train": {"undecodable": 0, "missing": 0},
        "val": {"undecodable": 0, "missing": 1},
    }
    assert "8 train / 11 val images (skipped 1 missing val);" in result.output
    assert f"skipping {source / gone}: missing" in result.output
    assert len(_index(version.path, "val")) == len(read_samples(version.output("val.beton"))) == 11


def test_missing_val_images_count_toward_the_skipped_limit(vgg, tiny_source, runs_root) -> None:
    (tiny_source / "val" / "ILSVRC2012_val_00000005.JPEG").unlink()  # 1 of 12 > 1%
    result = vgg("preprocess", str(tiny_source))
    assert result.exit_code == 1
    assert "1 of 12 val images are missing or could not be decoded" in result.output
    assert "ILSVRC2012_val_00000005.JPEG: missing" in result.output
    assert [v.status() for v in versions(runs_root / "imagenet")] == ["failed"]
    assert not (runs_root / "imagenet" / "v001" / "val.beton").exists()


def test_missing_val_image_keeps_its_place_in_a_subset(vgg, tiny_source, runs_root) -> None:
    kept_class, left_out = _first_val_image_of(tiny_source, 0), _first_val_image_of(tiny_source, 1)
    (tiny_source / kept_class).unlink()
    (tiny_source / left_out).unlink()  # class 1 is not among --classes 2 (classes 0 and 2)
    subset = ("--classes", "2", "--val-per-class", "1", "--max-skipped-fraction", "0.5")
    result = vgg("preprocess", str(tiny_source), *subset)
    assert result.exit_code == 0, result.output
    results = resolve("imagenet", runs_root).results()
    assert results["val_skipped"] == [{"path": kept_class, "reason": "missing"}]
    assert results["counts"]["val"] == 1  # class 0's first image is gone, not replaced
    assert "(skipped 1 missing val)" in result.output


@pytest.mark.parametrize(
    ("name", "named", "message"),
    [
        ("train/{w}/a\nb.JPEG", "file name {bad!r}", "contains a line break"),
        ("train/{w}/a\rb.JPEG", "file name {bad!r}", "contains a line break"),
        ("train/{w}/a\u2028b.JPEG", "file name {bad!r}", "contains a line break"),
        ("val/ILSVRC2012_val_00000001\n.JPEG", "file name {bad!r}", "contains a line break"),
        ("train/n9\n1/a.JPEG", "folder name {folder!r}", "contains a line break"),
        ("train/{w}/" + os.fsdecode(b"a\xffb.JPEG"), "file name {bad!r}", "is not valid UTF-8"),
    ],
    ids=["newline", "carriage-return", "line-separator", "val", "class-folder", "not-utf8"],
)
def test_names_that_break_the_index_are_refused_naming_the_file(
    vgg, tiny_source, runs_root, name, named, message
) -> None:
    bad = tiny_source / name.format(w=wnid(0))
    bad.parent.mkdir(exist_ok=True)
    shutil.copy(next((tiny_source / "train" / wnid(0)).glob("*.JPEG")), bad)
    result = vgg("preprocess", str(tiny_source))
    assert result.exit_code == 2, result.output
    offender = named.format(bad=str(bad), folder=str(bad.parent))
    assert f"{offender} {message}; rename or remove it" in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not (runs_root / "imagenet").exists()


def test_csv_quoting_names_round_trip_and_ignored_files_may_have_line_breaks(
    vgg, tiny_source, runs_root
) -> None:
    """Scope of the refusal above: commas and quotes are ordinary CSV, and a non-image file
    (macOS's folder icon is ``Icon\\r``) is only listed in JSON, so neither stops a run."""
    folder = tiny_source / "train" / wnid(0)
    shutil.copy(next(folder.glob("*.JPEG")), folder / 'a, "b".JPEG')
    (folder / "Icon\r").write_bytes(b"")
    result = vgg("preprocess", str(tiny_source), *RAW)
    assert result.exit_code == 0, result.output
    version = resolve("imagenet", runs_root)
    assert version.results()["counts"]["train"] == TINY.classes * TINY.train_per_class + 1
    assert version.results()["ignored_files"] == [f"train/{wnid(0)}/Icon\r"]
    rows = {r["path"]: int(r["index"]) for r in _index(version.path, "train")}
    image = read_samples(version.output("train.beton"))[rows[f'train/{wnid(0)}/a, "b".JPEG']][0]
    assert np.array_equal(image, np.asarray(Image.open(folder / 'a, "b".JPEG').convert("RGB")))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: None, "does not exist"),
        (lambda s: (s / "train").rename(s / "training"), "no train/ folder"),
        (lambda s: [p.unlink() for p in (s / "train" / wnid(1)).iterdir()], "has no images"),
        (lambda s: (s / "LOC_val_solution.csv").unlink(), "no labels were found"),
        (
            lambda s: (s / "LOC_val_solution.csv").write_text(
                (s / "LOC_val_solution.csv").read_text().replace(wnid(3), "n12345678")
            ),
            "not a train class",
        ),
        (
            lambda s: (s / "LOC_val_solution.csv").write_text(
                "\n".join((s / "LOC_val_solution.csv").read_text().splitlines()[:-1])
            ),
            "has no label",
        ),
    ],
    ids=[
        "missing-folder",
        "no-train",
        "empty-class",
        "no-val-labels",
        "unknown-wnid",
        "unlabelled-val-image",
    ],
)
def test_bad_input_is_one_clear_line(vgg, tmp_path, runs_root, damage, message) -> None:
    source = tmp_path / "imagenet"
    if message != "does not exist":
        make_dataset(source)
        damage(source)
    result = vgg("preprocess", str(source))
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not (runs_root / "imagenet").exists()  # nothing started, nothing half-written


def test_unknown_val_folder_class_is_rejected(vgg, tmp_path, runs_root) -> None:
    source = make_dataset(tmp_path / "f", SyntheticSpec(2, 2, 1, val_layout="folders"))
    (source / "val" / "n00000001").mkdir()
    result = vgg("preprocess", str(source))
    assert result.exit_code == 2 and "unknown val label" in result.output


def test_full_disk_fails_cleanly(tmp_path: Path, tiny_source: Path, runs_root: Path) -> None:
    def small_files() -> None:  # every file this process writes is capped at 1 MB
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    process = vgg_process(
        "preprocess", str(tiny_source), *RAW, runs_root=runs_root, preexec_fn=small_files
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert "disk full" in output or "File too large" in output
    assert "Traceback" not in output
    (version,) = versions(runs_root / "imagenet")
    assert version.status() in ("failed", INTERRUPTED)
    assert not (version.path / "train.beton").exists()


@pytest.mark.slow
def test_killed_preprocess_leaves_no_complete_version_and_resumes(tmp_path, runs_root) -> None:
    source = make_dataset(tmp_path / "big", SyntheticSpec(10, 40, 4))
    process = vgg_process("preprocess", str(source), "--workers", "1", runs_root=runs_root)
    partial = runs_root / "big" / "v001" / ".train.beton.partial"
    deadline = time.time() + 120
    while not partial.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert partial.exists(), "preprocess finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    (version,) = versions(runs_root / "big")
    # its forked workers share the version lock until the kernel stops them (they die with
    # their parent); until then the version still reads as running
    deadline = time.time() + 30
    while version.status() == "running" and time.time() < deadline:
        time.sleep(0.05)
    assert version.status() == INTERRUPTED
    assert not (version.path / "train.beton").exists()
    assert "train.beton" not in version.manifest()["outputs"]
    rerun = vgg_process("preprocess", str(source), runs_root=runs_root)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "resuming" in output
    assert [v.status() for v in versions(runs_root / "big")] == [COMPLETE]
    assert version.manifest()["attempts"] == 2
    assert len(read_samples(version.output("train.beton"))) == 400


def test_selected_classes_without_val_images_are_one_line(vgg, tiny_source) -> None:
    labels = tiny_source / "LOC_val_solution.csv"
    header, *rows = labels.read_text().splitlines()
    last = sorted(p.name for p in (tiny_source / "train").iterdir())[-1]  # not kept below
    relabelled = [f"{row.split(',')[0]},{last} 1 1 2 2" for row in rows]
    labels.write_text("\n".join([header, *relabelled]) + "\n")
    result = vgg("preprocess", str(tiny_source), "--classes", "1")
    assert result.exit_code == 2, result.output
    assert "no val images found for the selected classes" in result.output
    assert "Traceback" not in result.output


def test_a_command_on_one_core_exits_when_its_work_is_done(tmp_path: Path) -> None:
    """On one core (a one-CPU Slurm job, a `--jobs` slot) numba's TBB layer hung the process
    in interpreter shutdown after its work was done (numba issue #10556); `vgg` ends its
    process without that teardown (cli.main)."""
    import subprocess

    source = make_dataset(tmp_path / "tiny")
    one_core = {min(os.sched_getaffinity(0))}
    process = vgg_process("preprocess", str(source), "--max-side", "64",
                          runs_root=tmp_path / "runs", extra_env={},
                          preexec_fn=lambda: os.sched_setaffinity(0, one_core))
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, output
    assert resolve("tiny", tmp_path / "runs").status() == COMPLETE
