"""`--decode auto`'s pilot, measured for real (FFCV's loader on tiny data, a real model): the
rule that turns its two rates into a path, and what the pilot must leave untouched. (On a
CPU no pilot runs; test_train checks the path recorded and the resume of a chosen path.)"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vggcli.artifacts import DatasetRun
from vggcli.config import NetSpec, Recipe, TrainConfig
from vggcli.decode_choice import Pilot, chosen, measure
from vggcli.runs import resolve
from vggcli.train import TrainData, build_model


def test_the_host_keeps_up_when_it_decodes_a_tenth_more_than_the_model_trains() -> None:
    assert Pilot(host_img_s=112.0, model_img_s=100.0, workers=4).decode == "ffcv"
    assert Pilot(host_img_s=108.0, model_img_s=100.0, workers=4).decode == "gpu"
    config = TrainConfig(NetSpec("A", 10, 0.0625, 32), 32, 48, decode="auto")
    assert chosen(config, Pilot(50.0, 100.0, 4)).decode == "gpu"
    assert chosen(config, None).decode == "ffcv"  # a CPU run: nothing was measured


def test_the_pilot_measures_both_rates_and_leaves_the_weights_and_rngs_alone(
    dataset_runs: Path,
) -> None:
    dataset = DatasetRun(resolve("tiny", dataset_runs))
    data = TrainData(dataset.beton("train"), dataset.beton("val"), dataset.colour_statistics())
    net = NetSpec("A", 10, 0.0625, 32, 0.5, 0.0156)
    config = TrainConfig(net, 32, 48, Recipe(batch_size=16, micro_batch=8), "fp32", decode="auto")
    model = build_model(config, None, None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    pilot = measure(config, data, model, torch.device("cpu"), workers=1)
    assert 0 < pilot.host_img_s < math.inf and pilot.model_img_s > 0 and pilot.workers == 1
    assert pilot.decode in ("ffcv", "gpu")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # no stray gradient for step one
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's draws are the run's own
