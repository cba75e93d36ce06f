"""`make-demo-data --style photos`: patches of scikit-image's photographs, one class each,
validation cut from a region of each photograph that training never sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggcli.data.photos import PHOTOS, TRAIN_SHARE, photograph, window
from vggcli.data.synthetic import SyntheticSpec, render


def test_train_and_validation_patches_come_from_disjoint_regions() -> None:
    rows, columns = photograph("coffee").shape[:2]
    cut = columns * TRAIN_SHARE
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for height, width in ((96, 128), (128, 96), (300, 400)):
            for _ in range(200):
                left, top, right, bottom = window(split, (rows, columns), height, width, rng)
                assert 0 <= top < bottom <= rows
                assert (right <= cut) if split == "train" else (left >= cut)
                assert (right - left) / (bottom - top) == pytest.approx(width / height)


def test_every_class_is_its_own_photograph_drawn_deterministically() -> None:
    spec = SyntheticSpec(classes=len(PHOTOS), style="photos", seed=5)
    first = [np.asarray(render(spec, "train", c, 0)) for c in range(len(PHOTOS))]
    again = np.asarray(render(spec, "train", 3, 0))
    assert np.array_equal(first[3], again)
    assert not np.array_equal(np.asarray(render(spec, "val", 3, 0)), again)
    means = [image.reshape(-1, 3).mean(axis=0) for image in first]
    assert len({tuple(np.round(m)) for m in means}) == len(PHOTOS)  # ten different sources


def test_make_demo_data_writes_the_photos_set(vgg, tmp_path: Path) -> None:
    out = tmp_path / "photos"
    result = vgg("make-demo-data", str(out), "--style", "photos", "--classes", "3",
                 "--train-per-class", "4", "--val-per-class", "2", "--val-layout", "folders")
    assert result.exit_code == 0, result.output
    assert (out / "LOC_synset_mapping.txt").read_text().split()[1::2] == list(PHOTOS[:3])
    trains = sorted((out / "train").rglob("*.JPEG"))
    vals = sorted((out / "val").rglob("*.JPEG"))
    assert (len(trains), len(vals)) == (12, 6)
    with Image.open(trains[0]) as image:
        assert image.mode == "RGB" and 96 <= min(image.size) <= 300
