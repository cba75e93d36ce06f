"""`--decode torch` (and `gpu`, the same code on CUDA): the torch loader gives the FFCV
loader's batches: the same windows, flips, order, labels and failure flags, and pixels
within a grey level or so (torchvision's IDCT and a bilinear antialiased resize instead of
libjpeg-turbo's fast IDCT and INTER_AREA)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import vgg_process
from tests.test_train import TINY
from vggcli.config import TrainConfig
from vggcli.data.beton import BetonImages, StorageSettings, write_beton
from vggcli.data.loader import make_loader
from vggcli.data.sampling import LoaderSpec, crop_window, epoch_key, image_key, mix64
from vggcli.data.synthetic import SyntheticSpec, generate
from vggcli.runs import resolve

# against FFCV's whole-image decode (scheme 2), measured on the tiny set (crop 32, S 32-64):
# mean 1.1 grey levels, worst image 2.4-2.9 (two runs). Scheme 3's FFCV decoder decodes small
# training windows at a reduced DCT scale, which moves its own pixels by 1.5-1.7 (S 40-64 and
# 32-64; test_input.py): the torch path against it, 2.1 and 8.9
MEAN_BOUND, IMAGE_BOUND = 2.0, 4.0
SCHEME_3_BOUNDS = 3.0, 12.0


def _epoch(spec: LoaderSpec, epoch: int, offset: int = 0):  # type: ignore[no-untyped-def]
    """(images, labels, sample ids, batch sizes) of one pass from `offset` on."""
    loader, order = make_loader(spec)
    order.start(epoch, offset)
    batches = [(x.clone(), y.clone()) for x, y in loader]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    return images, labels, order.current.copy(), [len(y) for _, y in batches]


def _assert_close_pixels(
    ours: torch.Tensor, ffcv: torch.Tensor, bounds: tuple[float, float] = (MEAN_BOUND, IMAGE_BOUND)
) -> None:
    assert ours.shape == ffcv.shape and ours.dtype == ffcv.dtype == torch.uint8
    assert ours.is_contiguous(memory_format=torch.channels_last)
    diff = (ours.int() - ffcv.int()).abs().float()
    assert diff.mean() < bounds[0], float(diff.mean())
    assert diff.mean(dim=(1, 2, 3)).max() < bounds[1]  # a wrong window or flip is far more


def test_torch_loader_draws_the_ffcv_decoders_windows_and_flips(dataset_runs) -> None:
    """Each sample's (top, left, side, flip) is the one ScaleCropDecoder computes: its key
    from (seed, epoch, sample id), crop_window, flip iff uniform(key, 3) < 0.5; centre and
    no flip for validation; scheme 1 keyed by the micro-batch's ids."""
    from vggcli.data.sampling import uniform

    beton = resolve("tiny", dataset_runs).output("train.beton")
    shapes = BetonImages(beton).shapes
    spec = LoaderSpec(beton, 16, 32, 32, 64, 7, True, 1, decode="torch")
    loader, _ = make_loader(spec)
    ids = np.random.default_rng(0).permutation(len(shapes))[:50].astype(np.uint64)
    seed, u64 = np.uint64(7), np.uint64  # numba returns uint64 as a Python int: rewrap it
    for scheme, epoch in ((2, 0), (3, 3), (1, 3)):
        key = u64(epoch_key(seed, u64(epoch)))
        if scheme == 1:
            key = u64(mix64(seed))
            for sample in ids:
                key = u64(mix64(key ^ sample))
        ours = make_loader(replace(spec, scheme=scheme))[0].windows(ids, epoch)
        for (top, left, side, flip), sample in zip(ours, ids, strict=True):
            sample_key = u64(image_key(key, seed, sample))
            height, width = shapes[int(sample)]
            want = crop_window(height, width, 32, 32.0, 64.0, False, sample_key)[:3]
            assert (top, left, side) == want
            assert bool(flip) == (uniform(sample_key, 3) < 0.5)
    windows = loader.windows(ids, 0)
    assert 0 < windows[:, 3].sum() < len(ids) and len(set(windows[:, 2])) > 5
    centre = make_loader(replace(spec, s_min=40, s_max=40, train=False))[0].windows(ids, 2)
    for (top, left, side, flip), sample in zip(centre, ids, strict=True):
        height, width = shapes[int(sample)]
        assert (top, left, side) == crop_window(height, width, 32, 40.0, 40.0, True, u64(0))[:3]
        assert flip == 0


def test_torch_loader_gives_the_ffcv_loaders_batches(dataset_runs) -> None:
    """Same sample order, batch sizes and labels, pixels within MEAN_BOUND of FFCV's
    whole-image decode (scheme 2): a resumed epoch (offset of 5 global batches), both ranks
    of world size 2, and validation (centre crop, the last batch short). The resumed pass is
    exactly the tail of the whole one, and the two ranks' pixels exactly those of one
    process. Against scheme 3 (new runs' default), within its looser bounds."""
    beton = resolve("tiny", dataset_runs).output("train.beton")
    train = LoaderSpec(beton, 16, 32, 32, 64, 0, True, 1, global_batch=16, scheme=2)
    cases = [
        (train, 1, 5 * 16),
        (replace(train, batch_size=8, rank=0, world_size=2), 1, 0),
        (replace(train, batch_size=8, rank=1, world_size=2), 1, 0),
        (replace(train, s_min=40, s_max=40, train=False), 0, 0),
    ]
    ours = {}
    for spec, epoch, offset in cases:
        images, labels, ids, sizes = _epoch(replace(spec, decode="torch"), epoch, offset)
        f_images, f_labels, f_ids, f_sizes = _epoch(spec, epoch, offset)
        assert np.array_equal(ids, f_ids) and sizes == f_sizes
        assert labels.dtype == torch.int64 and torch.equal(labels, f_labels)
        _assert_close_pixels(images, f_images)
        ours[(spec.rank, spec.world_size, offset)] = dict(zip(ids.tolist(), images, strict=True))
    assert sizes[-1] == 200 % 16  # validation keeps its short last batch
    images, _, ids, _ = _epoch(replace(train, decode="torch"), 1)
    one = dict(zip(ids.tolist(), images, strict=True))
    tail = ours[(0, 1, 80)]
    assert list(tail) == ids[80:].tolist() and all(torch.equal(tail[i], one[i]) for i in tail)
    two = ours[(0, 2, 0)] | ours[(1, 2, 0)]
    assert sorted(two) == sorted(one) and all(torch.equal(one[i], two[i]) for i in one)
    scheme_3 = replace(train, scheme=3)
    assert torch.equal(_epoch(replace(scheme_3, decode="torch"), 1)[0], images)  # same draws
    _assert_close_pixels(images, _epoch(scheme_3, 1)[0], SCHEME_3_BOUNDS)


def test_a_pass_stopped_early_stops_its_threads_and_the_next_pass_is_whole(dataset_runs) -> None:
    """max_steps ends an epoch in the middle: the pass's prefetch and worker threads end
    with it, and the next pass starts from the order's start again."""
    import threading

    beton = resolve("tiny", dataset_runs).output("train.beton")
    loader, order = make_loader(LoaderSpec(beton, 16, 32, 32, 64, 0, True, 2, decode="torch"))
    order.start(0)
    whole = [x.clone() for x, _ in loader]
    before = threading.active_count()
    order.start(0)
    passing = iter(loader)
    first, _ = next(passing)
    assert threading.active_count() > before  # prefetching
    passing.close()
    assert threading.active_count() == before and torch.equal(first, whole[0])
    order.start(0)
    assert all(torch.equal(x, y) for (x, _), y in zip(loader, whole, strict=True))


@pytest.mark.parametrize("batched", [False, True])
def test_a_corrupt_jpeg_is_counted_and_comes_out_black(dataset_runs, tmp_path, batched) -> None:
    """The FFCV decoder's rule: flagged in order.failed, black, the rest unchanged. batched:
    the GPU's path on the CPU (one call for the batch fails, then one by one)."""
    from vggcli.data.sampling import EpochOrder

    source = resolve("tiny", dataset_runs).output("val.beton")
    beton = tmp_path / "val.beton"
    shutil.copyfile(source, beton)
    start = BetonImages(beton)._meta[3]["data_ptr"]
    data = bytearray(beton.read_bytes())
    data[int(start) + 2 : int(start) + 40] = bytes(38)  # the JPEG header: refused
    beton.write_bytes(bytes(data))
    spec = LoaderSpec(beton, 16, 32, 40, 40, 0, False, 2, decode="torch")
    clean, _, _, _ = _epoch(replace(spec, beton=source), 0)
    loader, order = make_loader(spec)
    loader.batched = batched
    assert isinstance(order, EpochOrder) and order.failed_decodes() == 0
    order.start(0)
    images = torch.cat([x.clone() for x, _ in loader])
    assert order.failed_decodes() == 1 and order.failed[3] == 1
    assert images[3].max() == 0
    assert torch.equal(images[:3], clean[:3]) and torch.equal(images[4:], clean[4:])
    f_loader, f_order = make_loader(replace(spec, decode="ffcv"))
    f_order.start(0)
    assert torch.cat([x.clone() for x, _ in f_loader])[3].max() == 0
    assert f_order.failed_decodes() == 1


@pytest.mark.parametrize("batched", [False, True])
def test_raw_samples_decode_beside_jpegs(tmp_path: Path, batched: bool) -> None:
    """A .beton of raw and JPEG samples (write mode proportion): the raw ones are read as
    height * width * 3 bytes; all match the FFCV loader."""
    generate(tmp_path / "src", SyntheticSpec(classes=2, train_per_class=8, val_per_class=1))
    files = sorted((tmp_path / "src" / "train").rglob("*.JPEG"))
    samples = [(path, i % 2) for i, path in enumerate(files)]
    storage = StorageSettings(max_side=96, write_mode="proportion", compress_probability=0.5)
    beton = tmp_path / "mixed.beton"
    write_beton(beton, "mixed.beton", samples, storage, 1, lambda _: None)
    images = BetonImages(beton)
    modes = {images.is_jpeg(i) for i in range(len(images))}
    assert modes == {True, False}  # both kinds in the file
    spec = LoaderSpec(beton, 6, 32, 40, 48, 0, True, 1)
    loader, order = make_loader(replace(spec, decode="torch"))
    loader.batched = batched
    order.start(0)
    ours = torch.cat([x.clone() for x, _ in loader])
    ffcv, _, _, _ = _epoch(spec, 0)
    _assert_close_pixels(ours, ffcv)
    assert order.failed_decodes() == 0


def test_train_decode_torch_trains_records_it_and_gpu_needs_cuda(vgg, train_root) -> None:
    """`--decode torch` trains, is recorded, resumes with it (from the config) and is
    inherited by a fine-tune; `--decode ffcv` records nothing (configs as before); gpu
    without CUDA and an unknown value are one line, before a version is made."""
    short = ["--epochs", "1", "--max-steps", "2", *TINY]
    result = vgg("train", "--net", "A", "--scale", "32-48", *short, "--decode", "torch")
    assert result.exit_code == 0, result.output
    version = resolve("A", train_root)
    config = version.manifest()["config"]
    assert config["decode"] == "torch" and version.results()["training"]["steps"] == 2
    assert TrainConfig.from_manifest(config).decode == "torch"
    tuned = vgg("finetune-scale", "A", "--scale", "40", "--epochs", "1")
    assert tuned.exit_code == 0, tuned.output
    assert resolve("A", train_root).manifest()["config"]["decode"] == "torch"
    back = vgg("finetune-scale", "A", "--scale", "40", "--epochs", "1", "--decode", "ffcv")
    assert back.exit_code == 0, back.output
    assert "decode" not in resolve("A", train_root).manifest()["config"]
    refusals = (("gpu", "needs a CUDA device"), ("nvjpeg", "choose auto, ffcv, torch, gpu"))
    for value, needle in refusals:
        args = ["--net", "A", "--scale", "40", *short, "--name", "X", "--decode", value]
        refused = vgg("train", *args)
        lines = [line for line in refused.output.splitlines() if line.strip()]
        assert refused.exit_code == 2 and len(lines) == 1, refused.output
        assert lines[0].startswith("error: ") and "--decode" in lines[0] and needle in lines[0]
        assert not (train_root / "X").exists()


@pytest.mark.slow
def test_killed_torch_decoded_training_resumes_bit_identical(train_root) -> None:
    """A resume reads `decode` from the recorded config and continues the torch loader's
    epoch at the checkpoint's offset: the weights end as an uninterrupted run's."""
    from tests.test_train import _kill_after_steps, _train_process
    from vggcli.artifacts import ModelRun
    from vggcli.checkpoints import load_model
    from vggcli.runs import COMPLETE, INTERRUPTED, versions

    reference = _train_process(train_root, "reference", "--decode", "torch")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    killed = _train_process(train_root, "killed", "--decode", "torch")
    _kill_after_steps(killed, train_root / "killed" / "v001" / "metrics.jsonl", 15)
    (version,) = versions(train_root / "killed")
    assert version.status() == INTERRUPTED
    resumed = vgg_process("train", "--resume", str(version.path), runs_root=train_root)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming" in output, output
    assert version.status() == COMPLETE and version.manifest()["config"]["decode"] == "torch"
    expected, _ = load_model(ModelRun(resolve("reference", train_root)))
    got, _ = load_model(ModelRun(version))
    for (name, a), b in zip(expected.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
