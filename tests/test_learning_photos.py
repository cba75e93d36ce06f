"""The learning checks of tests/test_learning.py on real photographs (`make-demo-data --style
photos`): a recipe tuned only to the generated shapes would show here. A module of its own,
so that a second pytest worker trains it beside the shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_learning import A_FINAL, check_a_learns, check_d_from_a_beats_random_init, train_a
from vggcli.data.photos import PHOTOS
from vggcli.data.synthetic import SyntheticSpec


@pytest.fixture(scope="module")
def photo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticSpec(classes=len(PHOTOS), style="photos")
    return train_a(tmp_path_factory.mktemp("photos"), spec)


@pytest.mark.slow
def test_net_a_learns_the_photos(photo_runs: Path, runs_root: Path) -> None:
    check_a_learns(photo_runs, runs_root, A_FINAL)


@pytest.mark.slow
def test_d_from_a_beats_random_init_on_the_photos(vgg, photo_runs, runs_root) -> None:
    check_d_from_a_beats_random_init(vgg, photo_runs, runs_root)
