"""Typed run kinds: what each kind of run holds, and the one place that reads it.

A run version is a folder with a manifest (`runs.py`); its *kind* says what it holds: a
dataset (betons and colour statistics), a model (weights and the config that trained
them), an evaluation (posteriors per method and scale), a fusion, a benchmark, a report or
an export (a model as ONNX or TorchScript files).
The stage that writes a kind records it in the manifest as `kind`; manifests written before
kinds were recorded are inferred once, in `kind_of`. Every file handed out goes through
`Artifact.file`, the one place to verify a file before it is read.

No torch here: fusion and listing runs must stay light.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vggcli import integrity
from vggcli.config import NetSpec, TrainConfig
from vggcli.errors import VggError, WorkFailed
from vggcli.eval_settings import default_scales
from vggcli.runs import (
    COMPLETE,
    MANIFEST,
    RunVersion,
    latest_complete,
    list_runs,
    resolve,
    versions,
)


class Kind(StrEnum):
    DATASET = "dataset"
    MODEL = "model"
    EVALUATION = "evaluation"
    FUSION = "fusion"
    BENCH = "bench"
    REPORT = "report"
    EXPORT = "export"

    @property
    def described(self) -> str:
        """How messages name it: 'a trained model run', 'an evaluation run'."""
        noun = "trained model" if self == Kind.MODEL else self.value
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun} run"


def kind_of(version: RunVersion) -> Kind | None:
    """The recorded kind; for older manifests, inferred from what the version holds."""
    manifest = version.manifest()
    if "kind" in manifest:
        try:
            return Kind(manifest["kind"])
        except ValueError:
            return None
    outputs = manifest.get("outputs", {})
    for kind, marker in _MARKERS:
        if marker in outputs:
            return kind
    return Kind.FUSION if "members" in manifest.get("config", {}) else None


@dataclass(frozen=True)
class Artifact:
    """A complete run version of a known kind."""

    version: RunVersion
    kind: ClassVar[Kind]

    @property
    def label(self) -> str:
        return self.version.label

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def path(self) -> Path:
        return self.version.path

    def manifest(self) -> dict[str, Any]:
        return self.version.manifest()

    def config(self) -> dict[str, Any]:
        return self.manifest().get("config", {})

    def results(self) -> dict[str, Any]:
        return self.version.results()

    def has(self, name: str) -> bool:
        return name in self.manifest().get("outputs", {})

    def file(self, name: str) -> Path:
        """A recorded output's path, verified against its recorded size and sha256; a clear
        error if the run never finished writing it or it changed since."""
        path = self.version.output(name)  # the manifest's shape check vouches for the record
        return integrity.check(path, self.manifest()["outputs"][name], self.label)


A = TypeVar("A", bound=Artifact)


class DatasetRun(Artifact):
    """`vgg preprocess`: train/val betons, their image order, the training colour statistics."""

    kind = Kind.DATASET
    CLASSES = "classes.json"

    def beton(self, split: str) -> Path:
        return self.file(f"{split}.beton")

    def colour_statistics(self) -> dict[str, Any]:
        return self.results()["colour_statistics"]

    def mean_rgb(self) -> list[float]:
        return list(self.colour_statistics()["mean_rgb"])

    def num_classes(self) -> int:
        return int(self.results()["num_classes"])

    def classes(self) -> list[dict[str, Any]]:
        """The class list in label order: index, wnid, name (classes.json)."""
        return _read_json(self.file(self.CLASSES))

    def val_index_sha256(self) -> str:
        """Identifies the validation images and their order (what fusion must agree on)."""
        return self.manifest()["outputs"]["val.csv"]["sha256"]


class ModelRun(Artifact):
    """`vgg train` / `vgg finetune-scale`: the weights and the config that trained them; or
    `vgg import-weights`: torchvision's weights, with their source and class list instead of
    a dataset and training scales (`imported`)."""

    kind = Kind.MODEL
    WEIGHTS = "model.pt"
    METRICS = "metrics.jsonl"
    BOARD = "tensorboard"  # the same rows as TensorBoard event files
    CLASSES = "classes.json"  # imported runs only; trained runs use their dataset's

    def weights(self) -> Path:
        return self.file(self.WEIGHTS)

    def net(self) -> str:
        return self.config()["net"]["net"]

    def crop(self) -> int:
        return int(self.config()["net"]["crop"])

    def imported(self) -> bool:
        """Weights imported from another library, not trained by a recipe here."""
        return "source" in self.config()

    def train_scales(self) -> tuple[int, int] | None:
        """(S_min, S_max); None for imported weights, which had no training scale here."""
        config = self.config()
        if self.imported():
            return None
        return int(config["s_min"]), int(config["s_max"])

    def dataset(self) -> str | None:
        """Label of the dataset run version it was trained on (None when imported)."""
        return self.config().get("dataset")

    def default_test_scales(self, multi_scale: bool) -> tuple[int, ...]:
        """The paper's test scales Q for this model's training scale (Sect. 4.1, 4.2); an
        imported run's are stated in its config."""
        scales = self.train_scales()
        if scales is None:
            return tuple(self.config()["test_scales"]["multi" if multi_scale else "single"])
        return default_scales(*scales, multi_scale, self.crop())

    def dataset_run(self, root: Path) -> DatasetRun:
        """The dataset it was trained on, through its parent record when it has one, so the
        dataset's manifest must be the one it recorded (a replaced or re-sealed dataset is
        refused); by label for runs from before."""
        label = self.dataset()
        for index, record in enumerate(self.manifest().get("parents", [])):
            if f"{record['run']}/{record['version']}" == label:
                return as_kind(parent(self.version, index, root), DatasetRun)
        return resolve_as(label, root, DatasetRun)

    def classes(self, root: Path) -> list[dict[str, Any]]:
        """Its outputs' classes in order: the dataset's it was trained on, or its own."""
        if self.imported():
            return _read_json(self.file(self.CLASSES))
        return self.dataset_run(root).classes()

    def metrics(self) -> Path:
        return self.file(self.METRICS)

    def flips(self) -> bool:
        """Trained with random flips (the paper's; runs before the switch all were, and so
        were torchvision's)."""
        return bool(self.config().get("recipe", {}).get("flip", True))

    def fc_only(self) -> bool:
        """Fine-tuned its fully-connected layers only (recorded only when so)."""
        return bool(self.config().get("fc_only", False))

    def net_spec(self) -> NetSpec:
        """The net's shape as it was trained or imported."""
        return NetSpec(**self.config()["net"])

    def width(self) -> float:
        """The multiplier of every conv and FC width (1: the paper's nets)."""
        return float(self.config()["net"].get("width", 1.0))

    def epochs(self) -> int:
        """Its epoch budget (a fine-tune's own, not its parent's); 0 for imported weights."""
        return 0 if self.imported() else int(self.config()["recipe"]["epochs"])

    def finetuned_from(self) -> str | None:
        """Label of the model run version whose weights it started from (fine-tunes)."""
        return self.config().get("finetune_from")

    def initialised_from(self) -> str | None:
        """Label of the trained A whose first layers it started from (B-E)."""
        return self.config().get("init_from")

    def train_config(self) -> TrainConfig:
        """The config it was trained with, as a resume must match it (not for imported
        weights, which have none)."""
        return TrainConfig.from_manifest(self.config())


class EvaluationRun(Artifact):
    """`vgg evaluate`: float32 posteriors (float16 before) per method and scale, in .beton
    order."""

    kind = Kind.EVALUATION
    LABELS = "labels.npy"

    @staticmethod
    def posteriors_name(method: str, scale: int | None = None) -> str:
        return f"{method}.npy" if scale is None else f"{method}-Q{scale}.npy"

    def posteriors(self, method: str, scale: int | None = None) -> Path:
        return self.file(self.posteriors_name(method, scale))

    def has_posteriors(self, method: str) -> bool:
        return self.has(self.posteriors_name(method))

    def labels(self) -> Path:
        return self.file(self.LABELS)

    def model(self) -> str:
        return self.config()["model"]

    def mode(self) -> str:
        return self.config()["mode"]

    def scales(self) -> tuple[int, ...]:
        return tuple(self.config()["scales"])

    def flips(self) -> bool:
        """Mirror posteriors averaged in (recorded only when off)."""
        return bool(self.config().get("flip", True))

    def errors(self) -> list[dict[str, Any]]:
        return self.results()["errors"]

    def membership(self) -> dict[str, Any]:
        """What fusion checks: same dataset version, image order, classes."""
        keys = ("model", "dataset", "val_index_sha256", "num_images", "num_classes")
        return {key: self.results()[key] for key in keys}


class FusionRun(Artifact):
    """`vgg fuse`: the averaged posteriors and every member's errors beside the fusion's."""

    kind = Kind.FUSION

    def members(self) -> list[str]:
        return self.config()["members"]

    def member_count(self) -> int:
        """Its members' evaluations are its parents, in order."""
        return len(self.manifest()["parents"])

    def mode(self) -> str:
        return self.config()["mode"]

    def errors(self) -> list[dict[str, Any]]:
        return self.results()["errors"]


class BenchRun(Artifact):
    kind = Kind.BENCH
    RESULTS = "results.json"


class ReportRun(Artifact):
    kind = Kind.REPORT
    REPORT = "report.md"


class ExportRun(Artifact):
    """`vgg export`: a model as a crop and a dense classifier file, and what they take."""

    kind = Kind.EXPORT
    DESCRIPTION = "export.json"
    SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}

    @classmethod
    def model_name(cls, which: str, fmt: str) -> str:
        """'crop.onnx', 'dense.pt', ...: `which` classifier in format `fmt`."""
        return f"{which}{cls.SUFFIXES[fmt]}"

    def model(self) -> str:
        """Label of the model run version it exports."""
        return self.config()["model"]

    def format(self) -> str:
        return self.config()["format"]

    def classifier(self, which: str) -> Path:
        return self.file(self.model_name(which, self.format()))


# How a manifest without `kind` shows what it is: an output only that kind writes.
_MARKERS = (
    (Kind.DATASET, "train.beton"),
    (Kind.MODEL, ModelRun.WEIGHTS),
    (Kind.EVALUATION, EvaluationRun.LABELS),
    (Kind.REPORT, ReportRun.REPORT),
    (Kind.BENCH, BenchRun.RESULTS),
)


def _read_json(path: Path) -> Any:
    """A verified JSON output (Artifact.file checked its hash, so it parses)."""
    return json.loads(path.read_text())


def as_kind(version: RunVersion, cls: type[A]) -> A:
    """`version` as a `cls` run; a clear error naming what it is instead."""
    found = kind_of(version)
    if found != cls.kind:
        what = found.described if found else "of no known kind"
        raise VggError(f"{version.label} is {what}, not {cls.kind.described}")
    return cls(version)


def resolve_as(ref: str | Path, root: Path, cls: type[A], field: str | None = None) -> A:
    """What the user typed (`runs/D`, `D`, `runs/D/v002`) as a complete `cls` run; `field`
    is the option it came from (`data`), named in a usage error."""
    try:
        return as_kind(resolve(ref, root), cls)
    except VggError as exc:
        if exc.exit_code != 2 or exc.field is not None or field is None:
            raise
        raise VggError(str(exc), field=field) from None


def latest_of_kind(root: Path, cls: type[A]) -> list[A]:
    """The newest complete version of every run under `root` whose kind is `cls`'s."""
    found = []
    for run_dir in list_runs(root):
        version = latest_complete(run_dir)
        if version is not None and kind_of(version) == cls.kind:
            found.append(cls(version))
    return found


def find_evaluation(
    model: ModelRun, root: Path, method: str, scales: tuple[int, ...], flip: bool = True
) -> EvaluationRun | None:
    """The newest complete evaluation of exactly this model version, at these scales, on the
    dataset it was trained on, that holds `method`'s posteriors (in the default evaluation
    run, `<model>-eval`)."""
    for version in reversed(versions(root / f"{model.name}-eval")):
        if version.status() != COMPLETE or kind_of(version) != Kind.EVALUATION:
            continue
        evaluation = EvaluationRun(version)
        if (
            evaluation.model() == model.label
            and evaluation.scales() == scales
            and evaluation.flips() == flip
            and evaluation.has_posteriors(method)
            and "data" not in evaluation.config()  # on the model's own dataset
        ):
            return evaluation
    return None


def parent(version: RunVersion, index: int, root: Path, *, checked: bool = True) -> RunVersion:
    """A recorded parent, found by its run/version label under `root` (so a moved runs
    root still resolves), else by the absolute path recorded when it was written. `checked`:
    when its manifest is there, it must be sealed and the one the child recorded (an edit,
    a re-seal or a replacement is a one-line error, exit 1); `vgg verify` lists instead."""
    record = version.manifest()["parents"][index]
    moved = root / record["run"] / record["version"]
    found = RunVersion(moved if moved.is_dir() else Path(record["path"]))
    if checked and (found.path / MANIFEST).is_file():
        found.manifest()
        if found.manifest_sha256() != record["manifest_sha256"]:
            raise WorkFailed(
                f"manifest of {found.path} changed since {version.label} recorded it "
                "(replaced or re-sealed): restore it or re-run the commands that made both")
    return found
