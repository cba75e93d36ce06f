"""The adopt stage: FFCV files a user already has (ffcv-imagenet's `write_imagenet.sh`, any
RGB image field 'image' and int field 'label') -> a dataset run, without rewriting them.

The files are linked into the run (symbolic links to their absolute paths; copied with
`copy`), recorded with their sha256 and size like any output, so every later command
verifies them. One pass over the training file computes what `vgg preprocess` does from
the source images: the mean RGB and the PCA colour statistics of the stored images.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from vggcli.artifacts import Kind
from vggcli.classes import imagenet_classes
from vggcli.data.beton import MAX_DECODE_FAILURES, BetonImages
from vggcli.data.images import ColourSums, colour_statistics
from vggcli.device import cpu_label
from vggcli.errors import VggError, WorkFailed
from vggcli.processes import die_with_parent
from vggcli.progress import console, progress_bar
from vggcli.runs import RunVersion, RunWriter
from vggcli.stages.common import lead_run
from vggcli.stages.preprocess import INDEX_COLUMNS

SPLITS = ("train", "val")
FIELDS = {"image": "RGBImageField", "label": "IntField"}  # what our loaders read, by name
CHUNK = 256  # images per statistics job


@dataclass(frozen=True)
class AdoptRequest:
    train: Path
    val: Path
    name: str = ""  # default: the training file's folder name
    wnids: Path | None = None  # one wnid per line, in label order; default ILSVRC's sorted
    copy: bool = False
    workers: int = 1

    def as_manifest(self) -> dict[str, Any]:
        return {
            "adopted": {split: str(path.resolve()) for split, path in self.files().items()},
            "wnids": str(self.wnids.resolve()) if self.wnids else "ilsvrc-sorted",
            "copied": self.copy,
        }

    def files(self) -> dict[str, Path]:
        return {"train": self.train, "val": self.val}


def run(request: AdoptRequest, runs_root: Path) -> RunVersion:
    """Check both files and the class list, then write (or resume) the dataset run."""
    labels = {split: read_labels(path) for split, path in request.files().items()}
    classes = _classes(request.wnids, labels)
    name = request.name or request.train.resolve().parent.name
    with lead_run(runs_root, name, Kind.DATASET, request.as_manifest(),
                  device=cpu_label(request.workers)) as out:
        writer = out.writer
        for split, path in request.files().items():
            if not writer.has_output(f"{split}.beton"):
                _bring(writer, f"{split}.beton", path, request.copy)
            if not writer.has_output(f"{split}.csv"):
                writer.write_text(f"{split}.csv", _index_csv(writer.path / f"{split}.beton",
                                                             classes))
        if not writer.has_output("classes.json"):
            writer.write_json("classes.json", classes)
        if "colour_statistics" not in writer.results():
            statistics, kinds = _statistics(writer.path / "train.beton", request.workers)
            writer.set_result("train_formats", kinds)
            writer.set_result("colour_statistics", statistics)
        _summarise(writer, labels, len(classes))
    return out.version


def read_labels(path: Path) -> np.ndarray:
    """The labels of an FFCV file whose fields our loaders can read; one line otherwise."""
    from ffcv.reader import Reader

    if not path.is_file():
        raise VggError(f"{path}: no such file")
    try:
        reader = Reader(str(path))
    except Exception as exc:  # FFCV asserts, indexes or looks up past a foreign header
        raise VggError(f"{path} is not an FFCV .beton file ({type(exc).__name__})") from None
    found = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
    if any(found.get(name) != kind for name, kind in FIELDS.items()):
        described = ", ".join(f"'{n}' ({k})" for n, k in found.items()) or "none"
        raise VggError(f"{path}: needs an RGBImageField 'image' and an IntField 'label', as "
                       f"ffcv-imagenet writes them; its fields: {described}")
    if reader.num_samples == 0:
        raise VggError(f"{path} holds no samples")
    column = f"f{reader.field_names.index('label')}"
    return np.asarray(reader.metadata[column], dtype=np.int64).reshape(-1)


def _classes(wnids_file: Path | None, labels: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The class list in label order: --wnids, else ILSVRC's sorted wnids (said so)."""
    ilsvrc = imagenet_classes()  # torchvision's order: sorted wnids; names for either list
    names = {c["wnid"]: c["name"] for c in ilsvrc}
    if wnids_file is not None:
        wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
        if len(set(wnids)) != len(wnids):
            raise VggError(f"{wnids_file} lists a wnid twice", field="wnids")
    else:
        wnids = [c["wnid"] for c in ilsvrc]
        console.print("no --wnids: labels taken as indices into ILSVRC-2012's 1000 wnids in "
                      "sorted order (what ffcv-imagenet's ImageFolder order gives)")
    for split, found in labels.items():
        if found.min() < 0 or found.max() >= len(wnids):
            raise VggError(f"the {split} file has labels {found.min()}..{found.max()}, outside "
                           f"the {len(wnids)} classes of the wnid list; give --wnids FILE")
    return [{"index": i, "wnid": w, "name": names.get(w, "")} for i, w in enumerate(wnids)]


def _bring(writer: RunWriter, name: str, source: Path, copy: bool) -> None:
    """The file into the run: a symbolic link to it, or a copy; recorded with its sha256."""
    with writer.writing(name) as tmp:
        if copy:
            shutil.copyfile(source, tmp)
        else:
            tmp.symlink_to(source.resolve())


def _index_csv(beton: Path, classes: list[dict[str, Any]]) -> str:
    """The sample order of the file, as `vgg preprocess` writes it (path: file and index)."""
    images = BetonImages(beton)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for index, (label, (height, width)) in enumerate(zip(images.labels, images.shapes,
                                                         strict=True)):
        wnid = classes[int(label)]["wnid"]
        writer.writerow([index, int(label), wnid, f"{beton.name}:{index}", height, width])
    return out.getvalue()


def _sums_of(job: tuple[str, int, int]) -> tuple[ColourSums, int, Counter]:
    """Colour sums of images [start, stop) of a file at stored size, the ones that no
    longer decode counted (and left out), and how many of each storage kind."""
    path, start, stop = job
    images = BetonImages(Path(path))
    total, kinds = ColourSums.zero(), Counter()
    for index in range(start, stop):
        image = images[index]
        kinds["jpg" if images.is_jpeg(index) else "raw"] += 1
        if index not in images.failed:
            total = total + ColourSums.of(image)
    return total, len(images.failed), kinds


def _statistics(beton: Path, workers: int) -> tuple[dict[str, Any], dict[str, int]]:
    """Mean RGB and colour PCA of every training image, over all cores, with a bar."""
    count = len(BetonImages(beton))
    jobs = [(str(beton), start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]
    total, failed, kinds = ColourSums.zero(), 0, Counter()
    with progress_bar() as bar, Pool(workers, initializer=die_with_parent) as pool:
        task = bar.add_task("colour statistics of train.beton", total=count)
        for (sums, bad, found), (_, start, stop) in zip(pool.imap(_sums_of, jobs), jobs,
                                                         strict=True):
            total, failed, kinds = total + sums, failed + bad, kinds + found
            bar.advance(task, stop - start)
    if failed > MAX_DECODE_FAILURES * count:
        raise WorkFailed(f"{failed} of {count} images of {beton.name} do not decode")
    return colour_statistics(total), dict(kinds)


def _summarise(writer: RunWriter, labels: dict[str, np.ndarray], classes: int) -> None:
    counts = {split: len(found) for split, found in labels.items()}
    writer.set_result("counts", counts)
    writer.set_result("num_classes", classes)
    writer.set_result("skipped_counts",
                      {split: {"undecodable": 0, "missing": 0} for split in SPLITS})
    mean = writer.results()["colour_statistics"]["mean_rgb"]
    console.print(f"{counts['train']} train / {counts['val']} val images adopted; mean RGB = "
                  f"({mean[0]:.2f}, {mean[1]:.2f}, {mean[2]:.2f})")
