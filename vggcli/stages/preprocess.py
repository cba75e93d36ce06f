"""The preprocess stage: an ILSVRC folder -> a dataset run (train.beton, val.beton and the
training colour statistics).

Two passes per split. The first decodes every image (in parallel) to validate it and to sum
its colours in float64; it is also what makes resumption cheap, since its outcome is saved as
``<split>.csv``. The second hands the valid images to FFCV's writer. Each output is written to
a temporary name and recorded with its sha256, so a killed run resumes at the first output
that is missing.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

from vggcli.artifacts import Kind
from vggcli.data.beton import StorageSettings, write_beton
from vggcli.data.images import ColourSums, ScanResult, colour_statistics, scan_image
from vggcli.data.layout import Layout, Sample, Subset, discover
from vggcli.device import cpu_label
from vggcli.errors import VggError, WorkFailed
from vggcli.processes import die_with_parent
from vggcli.progress import console, progress_bar
from vggcli.runs import RunVersion, RunWriter
from vggcli.stages.common import lead_run

SPLITS = ("train", "val")
MISSING = "missing"  # the skip reason of a val image its labels name but the disk lacks
# <split>.csv: a row per image in .beton order (adopt writes the same for adopted files)
INDEX_COLUMNS = ("index", "label", "wnid", "path", "stored_height", "stored_width")

__all__ = ["PreprocessConfig", "StorageSettings", "Subset", "run"]


@dataclass(frozen=True)
class PreprocessConfig:
    """What to read and how to store it; `name` and `workers` never change the result, so
    they are not part of the manifest's config."""

    source: Path
    name: str = ""  # run to write (default: the source folder's name)
    workers: int = 1
    subset: Subset = Subset()
    storage: StorageSettings = StorageSettings()
    val_labels: Path | None = None
    synsets: Path | None = None
    max_skipped_fraction: float = 0.01

    def as_manifest(self) -> dict:
        return {
            "source": str(self.source.resolve()),
            "subset": asdict(self.subset),
            "storage": asdict(self.storage),
            "val_labels": str(self.val_labels) if self.val_labels else None,
            "synsets": str(self.synsets) if self.synsets else None,
            "max_skipped_fraction": self.max_skipped_fraction,
        }


def run(config: PreprocessConfig, runs_root: Path) -> RunVersion:
    """Write (or resume) the dataset run."""
    layout = discover(config.source, config.subset, config.val_labels, config.synsets)
    name, workers = config.name or config.source.resolve().name, config.workers
    with lead_run(
        runs_root, name, Kind.DATASET, config.as_manifest(), device=cpu_label(workers)
    ) as out:
        writer = out.writer
        if not writer.has_output("classes.json"):
            writer.write_json("classes.json", _classes(layout))
            writer.set_result(
                "ignored_files", [str(p.relative_to(layout.root)) for p in layout.ignored]
            )
        for split in SPLITS:
            kept = _scan_split(writer, split, layout, config, workers)
            if not writer.has_output(f"{split}.beton"):
                _write_split(writer, split, kept, config.storage, workers)
        _summarise(writer, layout)
    return out.version


def _classes(layout: Layout) -> list[dict]:
    return [
        {"index": i, "wnid": w, "name": layout.names.get(w, "")} for i, w in enumerate(layout.wnids)
    ]


def _scan_split(
    run: RunWriter, split: str, layout: Layout, config: PreprocessConfig, workers: int
) -> list[tuple[Path, int]]:
    """Validate every image of a split once; return the kept (path, label) in order."""
    if run.has_output(f"{split}.csv"):
        return _read_index(run.path / f"{split}.csv", layout.root)
    samples: list[Sample] = layout.train if split == "train" else layout.val
    want_sums = split == "train"
    jobs = [(str(s.path), config.storage.max_side, want_sums) for s in samples]
    results: list[ScanResult] = []
    with progress_bar() as bar, Pool(workers, initializer=die_with_parent) as pool:
        task = bar.add_task(f"checking {split}", total=len(jobs))
        for result in pool.imap(scan_image, jobs, chunksize=8):
            results.append(result)
            bar.advance(task)
    missing = layout.val_missing if split == "val" else []
    skipped = [(s.path, r.reason) for s, r in zip(samples, results, strict=True) if not r.ok]
    skipped += [(path, MISSING) for path in missing]
    _check_skipped(split, skipped, len(samples) + len(missing), config.max_skipped_fraction)
    if want_sums:
        total = sum((r.sums for r in results if r.sums is not None), ColourSums.zero())
        run.set_result("colour_statistics", colour_statistics(total))
    run.set_result(f"{split}_formats", dict(Counter(r.kind for r in results if r.ok)))
    run.set_result(
        f"{split}_skipped",
        [{"path": str(path.relative_to(layout.root)), "reason": why} for path, why in skipped],
    )
    kept = [(s, r) for s, r in zip(samples, results, strict=True) if r.ok]
    run.write_text(f"{split}.csv", _index_csv(kept, layout))
    return [(s.path, s.label) for s, _ in kept]


def _check_skipped(
    split: str, skipped: Sequence[tuple[Path, str]], total: int, max_fraction: float
) -> None:
    """Undecodable and missing images count alike: either way the split lacks them, and
    many of either mean the wrong or a half-copied folder."""
    if total == 0:
        raise VggError(f"no {split} images found for the selected classes")
    for path, reason in skipped:
        console.print(f"[yellow]skipping[/] {path}: {reason}")
    if len(skipped) > max_fraction * total or len(skipped) == total:
        path, reason = skipped[0]
        raise WorkFailed(
            f"{len(skipped)} of {total} {split} images are missing or could not be decoded "
            f"(first: {path.name}: {reason}); is this the right folder? "
            "--max-skipped-fraction accepts more"
        )


def _index_csv(kept: list[tuple[Sample, ScanResult]], layout: Layout) -> str:
    """The exact order of samples in the .beton, so later results can name each image."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for index, (sample, result) in enumerate(kept):
        writer.writerow(
            [
                index,
                sample.label,
                layout.wnids[sample.label],
                sample.path.relative_to(layout.root),
                result.height,
                result.width,
            ]
        )
    return out.getvalue()


def _read_index(path: Path, root: Path) -> list[tuple[Path, int]]:
    with open(path, newline="") as fh:
        return [(root / row["path"], int(row["label"])) for row in csv.DictReader(fh)]


def _write_split(
    run: RunWriter, split: str, kept: list[tuple[Path, int]], storage: StorageSettings, workers: int
) -> None:
    with progress_bar() as bar, run.writing(f"{split}.beton") as tmp:
        task = bar.add_task(f"writing {split}.beton", total=len(kept))
        write_beton(tmp, f"{split}.beton", kept, storage, workers, lambda n: bar.advance(task, n))


def _summarise(run: RunWriter, layout: Layout) -> None:
    counts = {split: len(_read_index(run.path / f"{split}.csv", layout.root)) for split in SPLITS}
    run.set_result("counts", counts)
    run.set_result("num_classes", len(layout.wnids))
    skipped = _skipped_counts(run.results())
    run.set_result("skipped_counts", skipped)
    mean = run.results()["colour_statistics"]["mean_rgb"]
    console.print(
        f"{counts['train']} train / {counts['val']} val images{_skipped_note(skipped)}; "
        f"mean RGB = ({mean[0]:.2f}, {mean[1]:.2f}, {mean[2]:.2f})"
    )


def _skipped_counts(results: dict) -> dict[str, dict[str, int]]:
    """Per split, how many listed images were undecodable and how many missing."""
    counts = {}
    for split in SPLITS:
        reasons = [entry["reason"] for entry in results.get(f"{split}_skipped", [])]
        missing = reasons.count(MISSING)
        counts[split] = {"undecodable": len(reasons) - missing, "missing": missing}
    return counts


def _skipped_note(skipped: dict[str, dict[str, int]]) -> str:
    """' (skipped 2 undecodable train, 1 missing val)', or '' when nothing was skipped."""
    parts = [
        f"{n} {kind} {split}" for split, kinds in skipped.items() for kind, n in kinds.items() if n
    ]
    return f" (skipped {', '.join(parts)})" if parts else ""
