"""Find the images and labels of an ILSVRC-style folder, in the layouts people really have.

Training: ``train/<wnid>/*.JPEG``. Validation: ``val/<wnid>/*.JPEG`` (ImageFolder style), or
the official flat ``val/ILSVRC2012_val_*.JPEG`` with either Kaggle's ``LOC_val_solution.csv``
or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` plus its synset order (``meta.mat``
or a text file of wnids in ILSVRC2012_ID order). Classes are indexed by sorted wnid.
A flat val/ image that the labels name but the disk lacks is reported in ``val_missing``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from vggcli.errors import VggError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
LOC_SOLUTION = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DIRS = ("", "data", "ILSVRC2012_devkit_t12/data", "devkit/data")
NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
VAL_ID = re.compile(r"ILSVRC2012_val_(\d+)")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Subset:
    """How much of a dataset to take; None means all of it."""

    classes: int | None = None
    train_per_class: int | None = None
    val_per_class: int | None = None


@dataclass
class Layout:
    root: Path
    wnids: list[str]
    names: dict[str, str]
    train: list[Sample]
    val: list[Sample]
    val_layout: str
    ignored: list[Path] = field(default_factory=list)
    val_missing: list[Path] = field(default_factory=list)  # labelled, selected, not on disk


@dataclass
class _Val:
    samples: list[Sample]
    layout: str
    ignored: list[Path]
    missing: list[Path] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _indexable(path: Path) -> Path:
    """Refuse a name that cannot be one line of UTF-8 text in train.csv/val.csv.

    CSV quoting would carry a line break through our own reader, but not through every
    line-based reader of the index (``wc -l``, grep), and bytes that are not UTF-8 cannot be
    written at all. ImageNet has no such names, so one means a damaged or foreign folder:
    stop and name it rather than miscount silently. Non-image files are only listed in the
    manifest's JSON (macOS's ``Icon\\r``), so they pass.
    """
    name, kind = path.name, "folder" if path.is_dir() else "file"
    if name.splitlines() != [name]:
        raise VggError(f"{kind} name {str(path)!r} contains a line break; rename or remove it")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise VggError(
            f"{kind} name {str(path)!r} is not valid UTF-8; rename or remove it"
        ) from None
    return path


def _files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image-named files (names checked by `_indexable`) and everything else, both sorted
    (deterministic order)."""
    entries = sorted(p for p in folder.iterdir() if not p.is_dir())
    images = [_indexable(p) for p in entries if _is_image(p)]
    return images, [p for p in entries if not _is_image(p)]


def _pick_classes(all_wnids: list[str], count: int | None) -> list[str]:
    """Evenly spaced over the sorted wnids, so a small subset spans ImageNet's hierarchy."""
    if count is None or count == len(all_wnids):
        return all_wnids
    if count < 1:
        raise VggError("keep at least one class", field="classes")
    if count > len(all_wnids):
        raise VggError(f"{count} classes asked for, but the source has {len(all_wnids)}",
                       field="classes")
    step = len(all_wnids) / count
    return [all_wnids[int(i * step)] for i in range(count)]


def _class_dirs(folder: Path) -> list[Path]:
    """Class folders; their names become wnids and parts of indexed paths, so are checked."""
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [_indexable(d) for d in dirs]


def discover(
    root: Path,
    subset: Subset = Subset(),
    val_labels: Path | None = None,
    synsets: Path | None = None,
) -> Layout:
    """Read the folder structure and labels; every problem is one clear VggError."""
    if not root.is_dir():
        raise VggError(f"dataset folder {root} does not exist")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise VggError(f"{root} has no train/ folder (expected train/<wnid>/*.JPEG)")
    class_dirs = _class_dirs(train_dir)
    if not class_dirs:
        raise VggError(f"{train_dir} has no class folders (expected train/<wnid>/*.JPEG)")
    wnids = _pick_classes([d.name for d in class_dirs], subset.classes)
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    ignored: list[Path] = []
    train: list[Sample] = []
    for wnid in wnids:
        images, others = _files(train_dir / wnid)
        ignored += others
        if not images:
            raise VggError(f"{train_dir / wnid} has no images (.JPEG/.jpg/.png)")
        train += [Sample(p, label_of[wnid]) for p in images[: subset.train_per_class]]
    val = _discover_val(root, label_of, subset, val_labels, synsets)
    names = _class_names(root, wnids)
    return Layout(
        root, wnids, names, train, val.samples, val.layout, ignored + val.ignored, val.missing
    )


def _discover_val(
    root: Path,
    label_of: dict[str, int],
    subset: Subset,
    val_labels: Path | None,
    synsets: Path | None,
) -> _Val:
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise VggError(f"{root} has no val/ folder")
    class_dirs = _class_dirs(val_dir)
    if class_dirs:
        return _val_from_folders(val_dir, class_dirs, label_of, subset)
    images, others = _files(val_dir)
    if not images:
        raise VggError(f"{val_dir} has no images")
    wnid_of, source = _flat_val_labels(root, val_labels, synsets)
    samples, missing = _select_flat_val(_flat_entries(images, wnid_of, source), label_of, subset)
    return _Val(samples, f"flat+{source.name}", others, missing)


def _flat_entries(
    images: list[Path], wnid_of: dict[str, str], source: Path
) -> list[tuple[Path, str, bool]]:
    """Every labelled val image as (path, wnid, on disk), in file-name order.

    Images the labels name but the disk lacks stay in the list (with the name and suffix they
    would have) so they are reported as missing rather than silently dropped.
    """
    entries: list[tuple[Path, str, bool]] = []
    found: set[str] = set()
    for path in images:
        key = next((k for k in (path.stem, _val_id(path)) if k in wnid_of), None)
        if key is None:
            raise VggError(f"val image {path.name} has no label in {source}")
        found.add(key)
        entries.append((path, wnid_of[key], True))
    folder, suffix = images[0].parent, images[0].suffix
    entries += [
        (folder / f"{_val_stem(key)}{suffix}", wnid, False)
        for key, wnid in wnid_of.items()
        if key not in found
    ]
    return sorted(entries)


def _val_stem(key: str) -> str:
    """The file stem of a label key: the devkit numbers images, Kaggle names them."""
    return f"ILSVRC2012_val_{int(key):08d}" if key.isdigit() else key


def _select_flat_val(
    entries: list[tuple[Path, str, bool]], label_of: dict[str, int], subset: Subset
) -> tuple[list[Sample], list[Path]]:
    """Apply --classes and --val-per-class; a missing image takes its place in the first K
    of its class, as an undecodable one does, so a subset is the same with or without it."""
    per_class: dict[str, int] = {}
    val: list[Sample] = []
    missing: list[Path] = []
    for path, wnid, on_disk in entries:
        if wnid not in label_of:
            if subset.classes is not None or not on_disk:
                continue  # left out by --classes; or gone, with its class (a class-subset copy)
            raise VggError(f"val image {path.name} is labelled {wnid}, which is not a train class")
        per_class[wnid] = per_class.get(wnid, 0) + 1
        if subset.val_per_class is not None and per_class[wnid] > subset.val_per_class:
            continue
        if on_disk:
            val.append(Sample(path, label_of[wnid]))
        else:
            missing.append(path)
    return val, missing


def _val_from_folders(
    val_dir: Path, class_dirs: list[Path], label_of: dict[str, int], subset: Subset
) -> _Val:
    unknown = [d.name for d in class_dirs if d.name not in label_of]
    if unknown and subset.classes is None:
        raise VggError(f"val/{unknown[0]} is not a train class (unknown val label)")
    val: list[Sample] = []
    ignored: list[Path] = []
    for wnid, label in label_of.items():
        folder = val_dir / wnid
        if not folder.is_dir():
            continue
        images, others = _files(folder)
        ignored += others
        val += [Sample(p, label) for p in images[: subset.val_per_class]]
    if not val:
        raise VggError(f"{val_dir} has no images for the selected classes")
    return _Val(val, "folders", ignored)


def _val_id(path: Path) -> str | None:
    match = VAL_ID.search(path.name)
    return str(int(match.group(1))) if match else None


def _flat_val_labels(
    root: Path, val_labels: Path | None, synsets: Path | None
) -> tuple[dict[str, str], Path]:
    """Map image stem (or numeric id) -> wnid, from whichever ground-truth file is present."""
    candidates = (
        [val_labels]
        if val_labels
        else [
            root / LOC_SOLUTION,
            root / "val" / LOC_SOLUTION,
            *(root / d / DEVKIT_GROUND_TRUTH for d in DEVKIT_DIRS),
        ]
    )
    source = next((p for p in candidates if p is not None and p.is_file()), None)
    if source is None:
        raise VggError(
            f"{root}/val is flat but no labels were found: give the labels file "
            f"({LOC_SOLUTION} or {DEVKIT_GROUND_TRUTH})",
            field="val_labels",
        )
    if source.suffix == ".csv":
        return _read_loc_solution(source), source
    order = _synset_order(source.parent, synsets)
    return _read_devkit_ground_truth(source, order), source


def _read_loc_solution(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
        raise VggError(f"{path}: expected a header 'ImageId,PredictionString'")
    try:
        return {row[0]: row[1].split()[0] for row in rows[1:] if row}
    except IndexError as exc:
        raise VggError(f"{path}: a row has no label") from exc


def _synset_order(devkit_data: Path, synsets: Path | None) -> list[str]:
    """wnids in ILSVRC2012_ID order (ID 1 first), from meta.mat or a text file."""
    path = synsets or next(
        (p for p in (devkit_data / "meta.mat", devkit_data / "synsets.txt") if p.is_file()), None
    )
    if path is None:
        raise VggError(
            f"{DEVKIT_GROUND_TRUTH} needs the devkit's synset order: give meta.mat, or a "
            "text file with one wnid per line in ILSVRC2012_ID order",
            field="synsets",
        )
    if path.suffix == ".mat":
        from scipy.io import loadmat

        records = loadmat(path, squeeze_me=True)["synsets"]
        leaves = [r for r in records if int(r["num_children"]) == 0]
        return [str(r["WNID"]) for r in sorted(leaves, key=lambda r: int(r["ILSVRC2012_ID"]))]
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _read_devkit_ground_truth(path: Path, order: list[str]) -> dict[str, str]:
    """Line i holds the ILSVRC2012_ID (1-based) of validation image i."""
    labels: dict[str, str] = {}
    for image_id, line in enumerate(path.read_text().split(), start=1):
        class_id = int(line)
        if not 1 <= class_id <= len(order):
            raise VggError(f"{path}: class id {class_id} outside the synset order")
        labels[str(image_id)] = order[class_id - 1]
    return labels


def _class_names(root: Path, wnids: list[str]) -> dict[str, str]:
    """Human-readable names when a synset words file sits beside the data."""
    for name in NAME_FILES:
        path = root / name
        if path.is_file():
            pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines())
            names = {p[0]: p[1].strip() for p in pairs if len(p) == 2}
            return {w: names[w] for w in wnids if w in names}
    return {}
