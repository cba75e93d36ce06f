"""`vgg adopt`: FFCV files written the way ffcv-imagenet writes them (torchvision's
ImageFolder through FFCV's own DatasetWriter, RGBImageField 'proportion': JPEG and raw
samples side by side) become a dataset run that trains and evaluates like a preprocessed
one, and bad files are one line each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_dataset
from tests.test_hardening import _one_line_error
from vggcli.data.synthetic import SyntheticSpec
from vggcli.runs import COMPLETE, resolve

SPEC = SyntheticSpec(classes=4, train_per_class=12, val_per_class=3, seed=3, val_layout="folders")


def _write_imagenet(source: Path, split: str, out: Path, fields: dict | None = None) -> Path:
    """ffcv-imagenet's write_imagenet.py, at toy size: ImageFolder order (sorted wnids)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    fields = fields or {
        "image": RGBImageField(write_mode="proportion", max_resolution=96,
                               compress_probability=0.5, jpeg_quality=90),
        "label": IntField(),
    }
    DatasetWriter(str(out), fields, num_workers=1).from_indexed_dataset(
        ImageFolder(str(source / split)), chunksize=8)
    return out


@pytest.fixture(scope="module")
def betons(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ffcv-imagenet")
    source = make_dataset(folder / "images", SPEC)
    found = {split: _write_imagenet(source, split, folder / f"{split}_96_0.50_90.ffcv")
             for split in ("train", "val")}
    wnids = sorted(p.name for p in (source / "train").iterdir())
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return {**found, "wnids": folder / "wnids.txt", "source": source}


def test_adopted_files_train_and_evaluate_like_a_preprocessed_dataset(vgg, runs_root, betons):
    from vggcli.data.beton import BetonImages
    from vggcli.data.images import ColourSums, colour_statistics

    images = BetonImages(betons["train"])
    assert {images.is_jpeg(i) for i in range(len(images))} == {True, False}  # both kinds
    result = vgg("adopt", str(betons["train"]), str(betons["val"]), "--wnids",
                 str(betons["wnids"]), "--name", "adopted")
    assert result.exit_code == 0, result.output
    version = resolve("adopted", runs_root)
    assert (version.path / "train.beton").is_symlink()  # referenced, not copied
    assert version.manifest()["outputs"]["train.beton"]["size"] == betons["train"].stat().st_size
    results = version.results()
    assert results["counts"] == {"train": 48, "val": 12} and results["num_classes"] == 4
    assert results["train_formats"]["jpg"] + results["train_formats"]["raw"] == 48
    every = sum((ColourSums.of(images[i]) for i in range(len(images))), ColourSums.zero())
    np.testing.assert_allclose(results["colour_statistics"]["mean_rgb"],
                               colour_statistics(every)["mean_rgb"])
    classes = json.loads((version.path / "classes.json").read_text())
    assert [c["wnid"] for c in classes] == betons["wnids"].read_text().split()
    ilsvrc = vgg("adopt", str(betons["train"]), str(betons["val"]), "--name", "as-ilsvrc")
    assert ilsvrc.exit_code == 0 and "no --wnids: labels taken as indices" in ilsvrc.output
    assert resolve("as-ilsvrc", runs_root).results()["num_classes"] == 1000
    train = ["train", "--net", "A", "--scale", "32-48", "--crop", "32", "--width", "0.0625",
             "--batch-size", "8", "--epochs", "1", "--data", "adopted", "--name", "A"]
    assert vgg(*train).exit_code == 0
    assert vgg(*train[:-1], "A-torch", "--decode", "torch").exit_code == 0
    result = vgg("evaluate", "A", "--multi-scale", "--mode", "dense+crop")
    assert result.exit_code == 0, result.output
    assert resolve("A-eval", runs_root).status() == COMPLETE
    assert vgg("verify", "A-eval").exit_code == 0


def test_bad_files_are_one_line_each(vgg, runs_root, betons, tmp_path) -> None:
    from ffcv.fields import IntField, RGBImageField

    not_beton = tmp_path / "notes.beton"
    not_beton.write_bytes(b"hello" * 100)
    renamed = _write_imagenet(betons["source"], "val", tmp_path / "renamed.beton",
                              {"img": RGBImageField(max_resolution=64), "target": IntField()})
    short = tmp_path / "short.txt"
    short.write_text("n00000001\nn00000002\n")
    train, val = str(betons["train"]), str(betons["val"])
    cases = [
        ([str(not_beton), val], 2, "is not an FFCV .beton file"),
        ([train, str(renamed)], 2, "its fields: 'img' (RGBImageField), 'target' (IntField)"),
        ([train, val, "--wnids", str(short)], 2, "labels 0..3, outside the 2 classes"),
        ([train, str(tmp_path / "none.beton")], 2, "Invalid value for 'val'"),
    ]
    for args, code, needle in cases:
        _one_line_error(vgg("adopt", *args), code, needle)
    assert not runs_root.exists() or not any(runs_root.iterdir())
