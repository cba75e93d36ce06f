"""`vgg train` and `vgg finetune-scale` on tiny data: recipe, lineage, resume, bad input."""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import metrics_rows, vgg_process
from vggcli.artifacts import ModelRun
from vggcli.checkpoints import load, load_model
from vggcli.config import Recipe, TrainConfig
from vggcli.data.loader import make_loader
from vggcli.data.sampling import LoaderSpec, crop_window
from vggcli.distributed import SINGLE
from vggcli.errors import VggError
from vggcli.models import VGG, NetSpec, count_parameters, initialise
from vggcli.runs import COMPLETE, INTERRUPTED, RunVersion, resolve, versions
from vggcli.train import PlateauSchedule, build_model

# A net small enough to train in seconds: width 1/16, 32 px crops, 16-image batches.
TINY = shlex.split(
    "--width 0.0625 --crop 32 --batch-size 16 --init kaiming --input-scale 0.0156 "
    "--last-std 0.01 --lr 0.003"
)


def test_train_writes_weights_metrics_and_lineage(vgg, train_root: Path) -> None:
    result = vgg("train", "--net", "A", "--scale", "32-48", "--epochs", "2", *TINY)
    assert result.exit_code == 0, result.output
    version = resolve("A", train_root)
    assert f"run directory: {version.path}" in result.output.replace("\n", "")
    model, payload = load_model(ModelRun(version))
    assert model.spec == NetSpec("A", 10, 0.0625, 32, 0.5, 0.0156)
    mean = resolve("tiny", train_root).results()["colour_statistics"]["mean_rgb"]
    torch.testing.assert_close(model.mean, torch.tensor(mean, dtype=torch.float32))
    assert (payload["s_min"], payload["s_max"], payload["stage"]) == (32, 48, "A/S=32-48")
    rows = metrics_rows(version.path)
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(steps) == 2 * (200 // 16) and len(epochs) == 2
    logged = {"loss", "lr", "train_top1_err", "train_top5_err", "img_per_s", "wall_s"}
    assert logged | {"step_s", "input_wait_s"} <= set(steps[0])
    assert all(0 <= r["input_wait_s"] <= r["step_s"] for r in steps)  # the input stall
    assert epochs[-1]["val_scale"] == 40  # the middle of the jitter range
    assert 0 <= epochs[-1]["val_top1_err"] <= 1
    manifest = version.manifest()
    assert [p["run"] for p in manifest["parents"]] == ["tiny"]
    assert manifest["config"]["recipe"]["momentum"] == 0.9
    assert manifest["config"]["recipe"]["weight_decay"] == 5e-4
    assert not [o for o in manifest["outputs"] if o.startswith("checkpoint")]
    assert manifest["results"]["training"]["epochs"] == 2


def test_dry_run_prints_the_plan_and_what_this_machine_would_choose(vgg, train_root) -> None:
    args = ["train", "--net", "A", "--scale", "32-48", "--epochs", "2", "--dry-run", *TINY]
    plan = vgg(*args)
    assert plan.exit_code == 0, plan.output
    for row in ("192 (12 steps of 16)", "24 over 2 epochs", "off (the default on cpu)",
                "ffcv (auto, on a CPU)"):
        assert row in plan.output, (row, plan.output)
    given = vgg(*args, "--compile", "--decode", "torch")
    assert "on (given)" in given.output and "torch (given)" in given.output, given.output
    assert not (train_root / "A").exists()  # nothing trained, no version made


def test_finetune_chain_records_parents_and_paper_settings(vgg, train_root: Path) -> None:
    assert vgg("train", "--net", "A", "--scale", "40", "--epochs", "1", *TINY).exit_code == 0
    first = resolve("A", train_root)
    result = vgg("finetune-scale", str(train_root / "A"), "--scale", "48")
    assert result.exit_code == 0, result.output
    second = resolve("A", train_root)
    assert second.path.name == "v002"
    assert second.manifest()["parents"][0]["version"] == "v001"
    config = second.manifest()["config"]
    assert (config["s_min"], config["s_max"]) == (48, 48)
    assert config["recipe"]["lr"] == pytest.approx(0.003 / 10)  # TINY's base lr / 10
    assert config["finetune_from"] == first.label
    jitter = vgg("finetune-scale", str(train_root / "A"), "--scale", "32-64")
    assert jitter.exit_code == 0, jitter.output
    third = resolve("A", train_root)
    assert third.manifest()["parents"][0]["version"] == "v002"
    assert third.manifest()["config"]["recipe"]["lr"] == pytest.approx(0.003 / 10)  # not /100
    assert third.results()["training"]["val_scale"] == 48
    # fine-tuning starts from the parent's weights, not from a fresh init
    start = load(first.path / "model.pt")
    model = build_model(TrainConfig.from_manifest(config), start, None)
    assert all(torch.equal(start["state_dict"][k], v) for k, v in model.state_dict().items())


def test_fc_only_finetune_trains_fc6_to_fc8_alone_and_keeps_the_convs(
    vgg, train_root: Path
) -> None:
    """Sect. 4.4's ILSVRC-submission D: the multi-scale model fine-tuned from S=384 in its FC
    layers only. The convs come out bit-identical to the parent's, the head changes; without
    --fc-only the convs change too. The optimizer the training loop builds from the recorded
    config (as a resume does) holds fc6-fc8 alone."""
    from vggcli import checkpoints
    from vggcli.artifacts import DatasetRun, resolve_as
    from vggcli.config import Runtime
    from vggcli.train import TrainData, Trainer

    short = ["--scale", "40", "--epochs", "1", "--max-steps", "1"]
    assert vgg("train", "--net", "A", *short, *TINY).exit_code == 0
    parent = resolve("A", train_root)
    for name, extra in (("A-fc", ["--fc-only"]), ("A-all", [])):
        args = ["--scale", "32-48", "--epochs", "1", "--name", name, *extra]
        result = vgg("finetune-scale", str(parent.path), *args)
        assert result.exit_code == 0, result.output
    before, _ = load_model(ModelRun(parent))
    fc, _ = load_model(ModelRun(resolve("A-fc", train_root)))
    every, _ = load_model(ModelRun(resolve("A-all", train_root)))
    for old, new in zip(before.convs(), fc.convs(), strict=True):
        assert torch.equal(old.weight, new.weight) and torch.equal(old.bias, new.bias)
    for old, new in zip(before.fcs(), fc.fcs(), strict=True):
        assert not torch.equal(old.weight, new.weight)
    assert not any(
        torch.equal(old.weight, new.weight)
        for old, new in zip(before.convs(), every.convs(), strict=True)
    )
    recorded = resolve("A-fc", train_root).manifest()["config"]
    assert recorded["fc_only"] is True
    assert "fc_only" not in resolve("A-all", train_root).manifest()["config"]
    assert "fc_only" not in parent.manifest()["config"]  # other runs' configs unchanged

    config = TrainConfig.from_manifest(recorded)
    dataset = resolve_as("tiny", train_root, DatasetRun)
    data = TrainData(dataset.beton("train"), dataset.beton("val"), dataset.colour_statistics())
    model = build_model(config, checkpoints.load(parent.path / "model.pt"), None)
    store = checkpoints.LeadCheckpoints(SINGLE, None)
    cpu = torch.device("cpu")
    trainer = Trainer(config, data, model, Runtime(1), cpu, store, checkpoints.NO_METRICS)
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    head = [p for layer in trainer.model.fcs() for p in (layer.weight, layer.bias)]
    assert {id(p) for p in held} == {id(p) for p in head} and len(held) == 6
    decayed = trainer.optimizer.param_groups[0]
    assert decayed["weight_decay"] == 5e-4
    assert {id(p) for p in decayed["params"]} == {id(layer.weight) for layer in model.fcs()}
    assert not any(p.requires_grad for conv in trainer.model.convs() for p in conv.parameters())
    trainer.release()
    with pytest.raises(VggError, match="needs trained convs"):
        replace(config, finetune_from=None)  # a net trained from scratch cannot freeze its convs


def test_init_from_a_is_recorded_as_a_parent(vgg, train_root: Path) -> None:
    assert vgg("train", "--net", "A", "--scale", "40", "--epochs", "1", *TINY).exit_code == 0
    result = vgg(
        "train",
        "--net",
        "B",
        "--scale",
        "40",
        "--epochs",
        "1",
        "--init-from",
        str(train_root / "A"),
        *TINY,
    )
    assert result.exit_code == 0, result.output
    manifest = resolve("B", train_root).manifest()
    assert [p["run"] for p in manifest["parents"]] == ["tiny", "A"]
    assert manifest["config"]["init_from"] == "A/v001"
    assert "inserted_init" not in manifest["config"]["recipe"]  # the paper's: not recorded
    args = ["--scale", "40", "--epochs", "1", "--init-from", "A", "--name", "B-id", *TINY]
    result = vgg("train", "--net", "B", *args, "--inserted-init", "identity")
    assert result.exit_code == 0, result.output
    assert resolve("B-id", train_root).manifest()["config"]["recipe"]["inserted_init"] == "identity"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--net", "F"], "Invalid value for '--net': choose A, A-LRN"),
        (["--net", "A", "--crop", "100"], "multiple of 32"),
        (["--net", "A", "--crop", "32", "--scale", "24"], "at least the crop"),
        (["--net", "A", "--scale", "512-256"], "'--scale': must be S"),
        (["--net", "A", "--data", "nothing"], "no run 'nothing'"),
        (["--net", "A", "--batch-size", "16", "--micro-batch", "5"], "--micro-batch: 5 images"),
        (["--net", "A", "--batch-size", "16", "--micro-batch", "32"], "more than the batch of 16"),
        (["--net", "A", "--device", "garbage"], "'--device': choose auto, cpu, cuda or"),
        (["--net", "A", "--device", "cuda:7"], "CUDA device(s)"),
        (["--net", "A", "--precision", "fp8"], "'--precision': choose auto, bf16, fp32, not 'fp8'"),
        (["--net", "A", "--inserted-init", "zeros"], "'--inserted-init': choose random, identity"),
        (["--net", "D", "--init", "normal", "--inserted-init", "identity"], "needs --init-from"),
        ([], "give --net"),
    ],
)
def test_bad_train_options_are_one_line_errors(vgg, train_root, args, message) -> None:
    result = vgg("train", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0


def test_missing_or_ambiguous_dataset_run(vgg, runs_root: Path, train_root: Path) -> None:
    import shutil

    shutil.copytree(train_root / "tiny", train_root / "other")
    result = vgg("train", "--net", "A")
    assert result.exit_code == 2 and "several dataset runs" in result.output
    shutil.rmtree(train_root / "tiny")
    shutil.rmtree(train_root / "other")
    result = vgg("train", "--net", "A")
    assert result.exit_code == 2 and "vgg preprocess" in result.output


def test_init_from_and_finetune_refuse_the_wrong_runs(vgg, train_root: Path) -> None:
    assert vgg("train", "--net", "A", "--scale", "40", "--epochs", "1", *TINY).exit_code == 0
    wider = [*TINY]
    wider[1] = "0.125"
    result = vgg(
        "train", "--net", "D", "--scale", "40", "--init-from", str(train_root / "A"), *wider
    )
    assert result.exit_code == 2 and "need net A with width 0.125" in result.output
    result = vgg("finetune-scale", str(train_root / "tiny"), "--scale", "48")
    assert result.exit_code == 2 and "not a trained model run" in result.output
    result = vgg("finetune-scale", "A", "--scale", "48", "--micro-batch", "3")
    assert result.exit_code == 2 and "--micro-batch: 3 images per pass" in result.output
    assert [v.name for v in (train_root / "A").iterdir() if v.is_dir()] == ["v001"]  # none opened
    result = vgg("train", "--resume", str(train_root / "A" / "v001"))
    assert result.exit_code == 2 and "is complete; nothing to resume" in result.output


def _train_process(root: Path, name: str, *extra: str) -> subprocess.Popen:
    args = [
        "train",
        "--net",
        "A",
        "--scale",
        "32-48",
        "--epochs",
        "2",
        "--name",
        name,
        "--checkpoint-steps",
        "1",
        *TINY,
        *extra,
    ]
    return vgg_process(*args, runs_root=root)


def _kill_after_steps(process: subprocess.Popen, metrics: Path, steps: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= steps:
            break
        time.sleep(0.01)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_killed_training_resumes_bit_identical(train_root: Path) -> None:
    reference = _train_process(train_root, "reference")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    killed = _train_process(train_root, "killed")
    metrics = train_root / "killed" / "v001" / "metrics.jsonl"
    _kill_after_steps(killed, metrics, random.Random().randint(3, 20))
    assert versions(train_root / "killed")[0].status() == INTERRUPTED
    resumed = _train_process(train_root, "killed")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming" in output
    (version,) = versions(train_root / "killed")
    assert version.status() == COMPLETE and version.manifest()["attempts"] == 2
    expected, _ = load_model(ModelRun(resolve("reference", train_root)))
    got, _ = load_model(ModelRun(version))
    for (name, a), b in zip(expected.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    timing = ("img_per_s", "step_s", "input_wait_s", "wall_s")
    rows = [
        [{k: v for k, v in r.items() if k not in timing} for r in metrics_rows(v.path)]
        for v in (version, resolve("reference", train_root))
    ]
    assert rows[0] == rows[1]  # the metrics continue exactly too
    _assert_one_curve_per_field(version.path)


@pytest.mark.slow
def test_a_killed_run_resumes_with_its_recorded_decode_under_decode_auto(train_root) -> None:
    """`--decode auto` (the default) on a CPU is FFCV's path, recorded as every ffcv run is
    (no `decode` key) and with no pilot. Re-run after a kill, it finishes the version with
    the path that version recorded (torch here; on CUDA, the path its pilot chose) rather
    than starting a new version on a second choice."""
    killed = _train_process(train_root, "chosen", "--decode", "torch")
    _kill_after_steps(killed, train_root / "chosen" / "v001" / "metrics.jsonl", 3)
    resumed = _train_process(train_root, "chosen")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    (version,) = versions(train_root / "chosen")
    assert version.status() == COMPLETE and version.manifest()["config"]["decode"] == "torch"
    fresh = _train_process(train_root, "fresh")
    assert fresh.wait(timeout=300) == 0, fresh.stdout.read()
    manifest = resolve("fresh", train_root).manifest()
    assert "decode" not in manifest["config"] and "decode_pilot" not in manifest["results"]


def _assert_one_curve_per_field(version: Path) -> None:
    """TensorBoard's own reader (purging what a killed attempt logged past the restored
    step) sees each field of metrics.jsonl once per step, with the rows' values; the event
    files are recorded outputs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(version / "tensorboard"))
    board.Reload()
    for kind, field in (("step", "loss"), ("step", "lr"), ("epoch", "val_top1_err")):
        rows = [r for r in metrics_rows(version) if r["kind"] == kind]
        curve = [(e.step, e.value) for e in board.Scalars(f"{kind}/{field}")]
        assert [step for step, _ in curve] == [r["step"] for r in rows], (kind, field)
        assert [v for _, v in curve] == pytest.approx([r[field] for r in rows], rel=1e-6)
    outputs = RunVersion(version).manifest()["outputs"]
    assert any(name.startswith("tensorboard/events.out.tfevents") for name in outputs)


def test_a_corrupted_checkpoint_is_set_aside_and_training_starts_over(train_root: Path) -> None:
    """Before, the same command could never finish such a run (it failed on the damaged
    checkpoint every time); now the checkpoint is set aside, said so, and the run ends."""
    process = _train_process(train_root, "broken")
    _kill_after_steps(process, train_root / "broken" / "v001" / "metrics.jsonl", 3)
    (version,) = versions(train_root / "broken")
    # a kill can land between recording a new checkpoint and dropping the old: damage all
    recorded = sorted(o for o in version.manifest()["outputs"] if o.startswith("checkpoint-"))
    for name in recorded:
        checkpoint = version.path / name
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    rerun = _train_process(train_root, "broken")
    output, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "Traceback" not in output, output
    assert f"{recorded[-1]} is damaged" in output and "training starts over" in output
    assert "resuming at epoch" not in output
    assert all((version.path / f"{name}.damaged").exists() for name in recorded)
    assert version.status() == COMPLETE and version.manifest()["attempts"] == 2
    steps = [r["step"] for r in metrics_rows(version.path) if r["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # one clean run's rows, from the start


def test_scale_jitter_draws_s_uniformly_and_crops_everywhere() -> None:
    keys = np.arange(20000, dtype=np.uint64) * np.uint64(7919)
    draws = np.array([crop_window(300, 400, 224, 256.0, 512.0, False, k) for k in keys])
    scales = 224 * 300 / draws[:, 2]  # S implied by the window side
    assert scales.min() < 262 and scales.max() > 505
    assert abs(scales.mean() - 384) < 3 and abs(scales.std() - 256 / 12**0.5) < 3
    top, left, side = draws[:, 0], draws[:, 1], draws[:, 2]
    assert (top >= 0).all() and (top + side <= 300).all() and (left + side <= 400).all()
    assert np.corrcoef(left / (400 - side + 1), scales)[0, 1] ** 2 < 0.01
    fixed = np.array([crop_window(300, 400, 224, 256.0, 256.0, False, k) for k in keys[:500]])
    assert set(fixed[:, 2]) == {round(224 * 300 / 256)}
    centre = crop_window(300, 400, 224, 256.0, 256.0, True, np.uint64(1))
    assert centre[:3] == ((300 - 262) // 2, (400 - 262) // 2, 262)


def test_loader_order_and_augmentation_are_reproducible_and_resumable(dataset_runs) -> None:
    beton = resolve("tiny", dataset_runs).output("train.beton")
    loader, order = make_loader(LoaderSpec(beton, 16, 32, 32, 64, 0, True, 2))

    def epoch(number: int, offset: int = 0) -> list[torch.Tensor]:
        order.start(number, offset)
        return [images.clone() for images, _ in loader]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert len(first) == 200 // 16
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], second[0])
    resumed = epoch(0, offset=5 * 16)
    assert all(torch.equal(a, b) for a, b in zip(first[5:], resumed, strict=True))


def test_each_image_is_augmented_by_seed_epoch_and_id_whatever_the_world_size(
    dataset_runs,
) -> None:
    """Scheme 2: one process with batches of 16 and two ranks with 8 each see the same
    pixels for every sample id; between them the ranks cover every sample once."""
    beton = resolve("tiny", dataset_runs).output("train.beton")

    def pixels(batch: int, rank: int, world: int, epoch: int) -> dict[int, torch.Tensor]:
        spec = LoaderSpec(beton, batch, 32, 32, 64, 0, True, 1, 16, rank, world)
        loader, order = make_loader(spec)
        order.start(epoch)
        images = torch.cat([x.clone() for x, _ in loader])
        return dict(zip(order.current.tolist(), images, strict=True))

    for epoch in (0, 1):
        one = pixels(16, 0, 1, epoch)
        two = pixels(8, 0, 2, epoch) | pixels(8, 1, 2, epoch)
        assert sorted(one) == sorted(two) and len(one) == 192
        assert all(torch.equal(one[i], two[i]) for i in one)
    first, second = pixels(16, 0, 1, 0), pixels(16, 0, 1, 1)
    shared = first.keys() & second.keys()
    assert sum(not torch.equal(first[i], second[i]) for i in shared) > 0.9 * len(shared)


def test_colour_shift_draws_are_per_image_standard_normals() -> None:
    from vggcli.data.loader import colour_alphas

    ids = np.arange(20000, dtype=np.uint64)
    draws = colour_alphas(2, 0, 3, ids, 0).numpy()
    assert abs(draws.mean()) < 0.02 and abs(draws.std() - 1) < 0.02
    np.testing.assert_array_equal(colour_alphas(2, 0, 3, ids[5:9], 0).numpy(), draws[5:9])
    assert not np.array_equal(colour_alphas(2, 0, 4, ids[:4], 0).numpy(), draws[:4])


def test_gradient_accumulation_gives_the_full_batch_gradient() -> None:
    torch.manual_seed(0)
    model = VGG(NetSpec("A", 10, 0.0625, 32, dropout=0.0))
    initialise(model, "kaiming")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    loss = torch.nn.CrossEntropyLoss()
    loss(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for part in range(4):
        chunk = slice(4 * part, 4 * part + 4)
        (loss(model(x[chunk]), y[chunk]) / 4).backward()
    for a, p in zip(full, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)


def test_torch_compile_is_the_default_on_cuda_alone_and_a_choice_given_wins() -> None:
    """On CUDA compile ran D's training step 1.36x faster (the benchmark); on a CPU 1.01x,
    for a minute of compiling.
    test_distributed checks that a compiled run resumes and matches eager over DDP."""
    from vggcli.device import compile_for

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compile_for(cuda, None) is True and compile_for(cpu, None) is False
    assert compile_for(cuda, False) is False and compile_for(cpu, True) is True


def test_plateau_schedule_divides_by_ten_at_most_three_times() -> None:
    schedule = PlateauSchedule(0.01, patience=2, max_drops=3)
    drops = [schedule.step(a) for a in [0.1, 0.2, 0.2, 0.15, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]]
    assert drops == [False, False, False, True, False, False, True, False, True, False, False]
    assert schedule.lr == pytest.approx(1e-5) and schedule.drops == 3
    restored = PlateauSchedule(0.01, 2, 3)
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict()


def test_the_plateau_stop_ends_training_at_a_plateau_after_the_last_drop() -> None:
    schedule = PlateauSchedule(0.01, patience=2, max_drops=2, stop_on_plateau=True)
    accuracies = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]
    dropped, stopped = [], []
    for epoch, accuracy in enumerate(accuracies, 1):
        dropped.append(schedule.step(accuracy, epoch))
        stopped.append(schedule.stopped)
    assert [e for e, d in enumerate(dropped, 1) if d] == [4, 7]
    assert stopped == [False] * 8 + [True]  # the third plateau, with no drop left
    restored = PlateauSchedule(0.01, 2, 2, stop_on_plateau=True)
    restored.load_state_dict(schedule.state_dict())
    assert restored.stopped
    older = {k: v for k, v in schedule.state_dict().items() if k != "stopped"}
    restored.load_state_dict(older)  # a checkpoint from before the stop rule
    assert not restored.stopped
    scheduled = PlateauSchedule(0.01, patience=5, max_drops=1, drop_after=2, stop_on_plateau=True)
    assert [scheduled.step(0.5, e) or scheduled.stopped for e in (1, 2, 3)] == [False, True, False]
    # the scheduled drop used the last one: the next plateau ends training
    last = PlateauSchedule(0.01, patience=2, max_drops=1, drop_after=2, stop_on_plateau=True)
    assert [last.step(0.5, e) or last.stopped for e in (1, 2, 3, 4)] == [False, True, False, True]


def test_a_plateau_stopped_training_ends_early_and_records_it(vgg, train_root: Path) -> None:
    """With no lr drop allowed, the first plateau ends training: fewer epochs than the cap,
    the last row says so, the config records the rule, and the run is complete."""
    args = ["--net", "A", "--scale", "32", "--epochs", "30", "--plateau-stop", "--patience",
            "1", "--max-lr-drops", "0", "--name", "A-stop", *TINY]
    result = vgg("train", *args)
    assert result.exit_code == 0, result.output
    version = resolve("A-stop", train_root)
    epochs = [r for r in metrics_rows(version.path) if r["kind"] == "epoch"]
    assert len(epochs) < 30 and epochs[-1].get("stopped") is True
    assert not any(r.get("stopped") for r in epochs[:-1])
    assert epochs[-1]["val_top1_err"] >= min(r["val_top1_err"] for r in epochs[:-1])
    assert version.results()["training"]["epochs"] == len(epochs)
    assert version.manifest()["config"]["recipe"]["plateau_stop"] is True
    assert "training stops" in result.output.replace("\n", " ")


def test_a_scheduled_final_drop_divides_the_lr_after_its_epoch_even_while_improving() -> None:
    from vggcli.stages.finetune import final_drop

    schedule = PlateauSchedule(0.01, patience=5, max_drops=3, drop_after=4)
    drops = [schedule.step(a, epoch) for epoch, a in enumerate([0.1, 0.2, 0.3, 0.4, 0.5], 1)]
    assert drops == [False, False, False, True, False] and schedule.lr == pytest.approx(1e-3)
    spent = PlateauSchedule(0.01, patience=1, max_drops=1, drop_after=3)
    assert [spent.step(0.1, e) for e in (1, 2, 3)] == [False, True, False]  # at most max_drops
    assert final_drop(4, 24, 6) == 1 and final_drop(4, 24, 24) == 4  # the same share
    assert final_drop(0, 24, 6) == 0 and final_drop(5, 6, 2) == 1  # one epoch at the full lr
    with pytest.raises(VggError, match="at least one epoch at the full lr"):
        Recipe(epochs=4, final_drop=4)


def test_weight_decay_falls_on_every_conv_and_fc_weight_and_no_bias() -> None:
    from vggcli.config import Recipe
    from vggcli.train import _optimizer

    model = VGG(NetSpec("C", num_classes=10, width=1 / 16, crop=32))
    decayed, plain = _optimizer(model, Recipe()).param_groups
    layers = list(model.weight_layers())
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(layer.weight) for layer in layers}
    assert {id(p) for p in plain["params"]} == {id(layer.bias) for layer in layers}
    assert len(layers) == 16 and count_parameters(model) == sum(
        p.numel() for group in (decayed, plain) for p in group["params"]
    )


def test_half_the_training_crops_are_mirrored_and_none_with_no_flip(dataset_runs) -> None:
    """Same seed, same windows: with flips each crop is either the no-flip crop or its
    mirror, the mirrored share binomial(200, 1/2) (3.5 sigma: 75..125)."""
    beton = resolve("tiny", dataset_runs).output("train.beton")

    def crops(flip: bool) -> torch.Tensor:
        loader, order = make_loader(LoaderSpec(beton, 8, 32, 40, 40, 0, True, 1, flip=flip))
        order.start(0)
        return torch.cat([images.clone() for images, _ in loader])

    plain, flipped = crops(False), crops(True)
    same = [torch.equal(a, b) for a, b in zip(flipped, plain, strict=True)]
    mirrored = [torch.equal(a, b.flip(-1)) for a, b in zip(flipped, plain, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 75 <= sum(m and not s for s, m in zip(same, mirrored, strict=True)) <= 125


def test_deeper_nets_start_from_the_one_matching_net_a_else_glorot(vgg, train_root) -> None:
    base = shlex.split(
        "--scale 40 --epochs 1 --max-steps 1 --width 0.0625 --crop 32 --batch-size 16 "
        "--input-scale 0.0156 --last-std 0.01 --lr 0.003"
    )
    alone = vgg("train", "--net", "B", *base, "--name", "B0")
    assert alone.exit_code == 0 and "init: glorot random init" in alone.output, alone.output
    config = resolve("B0", train_root).manifest()["config"]
    assert (config["init_from"], config["recipe"]["init"]) == (None, "glorot")
    assert vgg("train", "--net", "A", *base).exit_code == 0
    assert resolve("A", train_root).manifest()["config"]["recipe"]["init"] == "normal"
    wider = vgg("train", "--net", "A", *base, "--width", "0.125", "--name", "A-wide")
    assert wider.exit_code == 0  # another width: not a candidate for B at width 1/16
    paper = vgg("train", "--net", "B", *base)
    assert "init: first layers from A/v001" in paper.output, paper.output
    assert resolve("B", train_root).manifest()["config"]["init_from"] == "A/v001"
    shallow = vgg("train", "--net", "B-5x5", *base)  # shallower than A: initialised like A
    assert shallow.exit_code == 0 and "init: normal random init" in shallow.output, shallow.output
    config = resolve("B-5x5", train_root).manifest()["config"]
    assert (config["init_from"], config["recipe"]["init"]) == (None, "normal")
    refused = vgg("train", "--net", "B-5x5", *base, "--init-from", str(train_root / "A"))
    assert refused.exit_code == 2 and refused.output.strip().count("\n") == 0
    assert "B-5x5 cannot start from net A's layers" in refused.output
    literal = vgg("train", "--net", "B", *base, "--init", "normal", "--name", "B-normal")
    config = resolve("B-normal", train_root).manifest()["config"]
    assert literal.exit_code == 0 and config["init_from"] is None
    assert config["recipe"]["init"] == "normal"
    assert vgg("train", "--net", "A", *base, "--name", "A-again").exit_code == 0
    ambiguous = vgg("train", "--net", "C", *base)
    assert ambiguous.exit_code == 2 and "several trained net-A runs" in ambiguous.output


def test_vgg_tensorboard_serves_the_runs_curves(tmp_path: Path) -> None:
    """`vgg tensorboard ROOT` starts TensorBoard on the runs root: its HTTP API lists the
    run's curves as our Board wrote them; `--print` only says the command."""
    import socket
    import urllib.request

    from vggcli.checkpoints import Board

    board = Board(tmp_path / "A" / "v001" / "tensorboard", [])
    board.add({"kind": "step", "epoch": 1, "step": 1, "loss": 2.5, "lr": 0.01})
    board.close()
    printed = vgg_process("tensorboard", str(tmp_path), "--print", runs_root=tmp_path)
    assert printed.wait(timeout=60) == 0
    assert f"--logdir {tmp_path}" in printed.stdout.read()
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    server = vgg_process("tensorboard", str(tmp_path), "--port", str(port), runs_root=tmp_path)
    try:
        deadline, tags = time.time() + 60, {}
        while time.time() < deadline and "A/v001/tensorboard" not in tags:
            time.sleep(0.5)
            try:
                url = f"http://localhost:{port}/data/plugin/scalars/tags"
                tags = json.loads(urllib.request.urlopen(url, timeout=5).read())
            except OSError:
                assert server.poll() is None, server.stdout.read()
        assert set(tags["A/v001/tensorboard"]) == {"step/loss", "step/lr"}
    finally:
        server.kill()
        server.wait()
