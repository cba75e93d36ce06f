"""The input path: decoding at a reduced DCT scale keeps the windows and (nearly) the pixels
of a full decode, and `vgg bench loader` measures every loader on the same images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import edit_manifest
from vggcli.data.jpeg_window import decode_window_nogil as decode_window
from vggcli.data.loader import FAST_EIGHTHS, decode_eighths, make_loader, scaled_edge, scaled_size
from vggcli.data.resize import mirror, resize_window
from vggcli.data.sampling import LoaderSpec, crop_window, epoch_key, image_key
from vggcli.runs import resolve


def test_the_decode_scale_is_the_smallest_fast_one_that_keeps_the_crop_s_pixels() -> None:
    for crop in (32, 64, 224):
        for side in range(crop, 20 * crop, 7):
            eighths = decode_eighths(side, crop)
            if eighths < 8:
                assert side * eighths // 8 >= crop
            smaller = [e for e in FAST_EIGHTHS if e < eighths]
            assert all(side * e // 8 < crop for e in smaller), (side, crop, eighths)


def _photo_like_jpeg(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus grain, JPEG q90 with 4:2:0 chroma (as FFCV stores)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([np.sin(rows / (9 + 7 * c) + cols / (13 + 5 * c)) for c in range(3)], -1)
    image = 127 + 80 * image + rng.normal(0, 20, (height, width, 3))
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.reshape(-1)


def test_a_decoded_window_is_bit_identical_to_that_window_of_the_whole_image() -> None:
    """decode_window against FFCV's whole-image decode (same flags) at every fast DCT scale,
    odd sizes included: random windows, the edges and the whole image in a buffer of exactly
    the scaled image's size (the last row's spill must fit)."""
    from ffcv.libffcv import imdecode

    rng = np.random.default_rng(0)
    for k, (height, width) in enumerate([(375, 500), (500, 375), (257, 333), (61, 47)]):
        jpeg = _photo_like_jpeg(height, width, k)
        for eighths in (1, 2, 4, 8):
            rows, cols = scaled_size(height, eighths), scaled_size(width, eighths)
            whole = np.zeros(rows * cols * 3, dtype=np.uint8)
            assert imdecode(jpeg, whole, height, width, height, width, 0, 0, eighths, 8, 0, 0) == 0
            whole = whole.reshape(rows, cols, 3)
            windows = [(0, 0, rows, cols), (rows - 1, cols - 1, 1, 1), (0, cols - 3, rows, 3)]
            for _ in range(12):
                h, w = int(rng.integers(1, rows + 1)), int(rng.integers(1, cols + 1))
                windows.append(
                    (int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1)), h, w)
                )
            for top, left, h, w in windows:
                out = np.full(rows * cols * 3, 7, dtype=np.uint8)
                assert decode_window(jpeg, out, eighths, top, left, h, w) == 0
                window = out[: h * w * 3].reshape(h, w, 3)
                np.testing.assert_array_equal(window, whole[top : top + h, left : left + w])


def test_a_window_of_a_bad_jpeg_or_outside_the_image_or_buffer_is_refused() -> None:
    jpeg = _photo_like_jpeg(100, 120, 0)
    out = np.zeros(100 * 120 * 3, dtype=np.uint8)
    assert decode_window(jpeg, out, 8, 0, 0, 100, 120) == 0
    header_gone = jpeg.copy()
    header_gone[2:40] = 0
    assert decode_window(header_gone, out, 8, 0, 0, 10, 10) == -1
    assert decode_window(jpeg[: len(jpeg) // 2].copy(), out, 8, 0, 0, 100, 120) == -1  # truncated
    assert decode_window(jpeg, out, 8, 50, 0, 51, 10) == -1  # past the bottom
    assert decode_window(jpeg, out, 4, 0, 0, 10, 61) == -1  # past the right at 1/2: 60 wide
    assert decode_window(jpeg, out, 8, 0, 0, 0, 10) == -1
    assert decode_window(jpeg, out[: 100 * 120 * 3 - 1], 8, 0, 0, 100, 120) == -1  # no room


def test_a_window_maps_inside_the_reduced_image_and_keeps_the_crop_s_pixels() -> None:
    """Every window the decoder can draw, mapped to the scale it picks: inside the decoded
    image, at least the crop across, each edge within half a reduced pixel of exact."""
    rng = np.random.default_rng(0)
    for _ in range(20_000):
        crop = int(rng.choice([32, 64, 224]))
        height, width = (int(v) for v in rng.integers(crop, 12 * crop, 2))
        side = int(rng.integers(crop, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        eighths = decode_eighths(side, crop)
        for start, length in ((top, height), (left, width)):
            near, far = scaled_edge(start, eighths), scaled_edge(start + side, eighths)
            assert near >= 0 and far <= scaled_size(length, eighths)
            assert abs(near - start * eighths / 8) <= 0.5
            assert abs(far - (start + side) * eighths / 8) <= 0.5
            assert eighths == 8 or far - near >= crop


@pytest.mark.parametrize("linear", [True, False])
def test_resize_window_is_opencv_s_resize_of_that_window(linear: bool) -> None:
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = np.empty((32, 32, 3), dtype=np.uint8)
    resize_window(image, 7, 11, 50, 61, out, linear)
    mode = cv2.INTER_LINEAR if linear else cv2.INTER_AREA
    expected = cv2.resize(image[7:57, 11:72], (32, 32), interpolation=mode)
    assert np.abs(out.astype(int) - expected).max() <= 1  # two OpenCV builds: rounding


def test_mirror_flips_left_right_in_place() -> None:
    image = np.random.default_rng(1).integers(0, 256, (31, 45, 3), dtype=np.uint8)
    flipped = image.copy()
    mirror(flipped)
    np.testing.assert_array_equal(flipped, image[:, ::-1])


def _epoch(beton: Path, scheme: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader, order = make_loader(LoaderSpec(beton, 16, 32, 40, 64, 0, True, 2, scheme=scheme))
    order.start(epoch)
    batches = [(images.clone(), labels.clone()) for images, labels in loader]
    return torch.cat([b[0] for b in batches]).float(), torch.cat([b[1] for b in batches])


def test_reduced_scale_decoding_keeps_the_windows_and_nearly_the_pixels(dataset_runs) -> None:
    """Scheme 3 (reduced DCT scale, bilinear below 2x) against scheme 2 (full decode,
    INTER_AREA): the same draws and order, pixels within a small tolerance; and the test
    data really does decode at reduced scales."""
    beton = dataset_runs / "tiny" / "v001" / "train.beton"
    full, full_labels = _epoch(beton, 2, 3)
    scaled, scaled_labels = _epoch(beton, 3, 3)
    assert torch.equal(full_labels, scaled_labels)
    diff = (full - scaled).abs().mean(dim=(1, 2, 3))
    assert diff.mean() < 2.5, diff.mean()  # measured 1.5 on these hard-edged shapes
    assert diff.max() < 12, diff.max()  # an edge moved by at most half an output pixel

    from vggcli.data.beton import BetonImages

    images = BetonImages(beton)
    key = np.uint64(epoch_key(np.uint64(0), np.uint64(3)))
    sides = [
        crop_window(
            *images.shapes[i],
            32,
            40.0,
            64.0,
            False,
            np.uint64(image_key(key, np.uint64(0), np.uint64(i))),
        )[2]
        for i in range(len(images))
    ]
    assert min(decode_eighths(side, 32) for side in sides) < 8


def test_bench_loader_on_a_dataset_run_writes_every_figure(vgg, train_root: Path) -> None:
    """On every training image of the tiny set, one of them damaged: counted, left out."""
    from ffcv.reader import Reader

    beton = train_root / "tiny" / "v001" / "train.beton"
    start = int(Reader(str(beton)).metadata[0]["f0"]["data_ptr"])
    data = bytearray(beton.read_bytes())
    data[start + 2 : start + 40] = bytes(38)  # the JPEG header: libjpeg-turbo refuses it
    beton.write_bytes(bytes(data))
    args = ["--data", "tiny", "--crop", "32", "--scale", "40-64", "--images", "500"]
    args += ["--pass-images", "400"]
    result = vgg("bench", "loader", *args, "--batch", "8", "--repeats", "1", "--workers", "1")
    assert result.exit_code == 1 and "train.beton does not match" in result.output
    result = vgg(
        "bench", "loader", *args, "--batch", "8", "--repeats", "1", "--workers", "1", "--no-verify"
    )
    assert result.exit_code == 0, result.output
    run = resolve("bench-loader", train_root)
    figures = json.loads((run.path / "results.json").read_text())
    assert (figures["images"], figures["decode_failures"]) == (199, 1)
    assert figures["scale"] == [40, 64]
    for name in (
        "ours",
        "ours_scheme_2",
        "ours_torch_decode",
        "torchvision",
        "ffcv_rrc",
        "decode_full",
        "decode_ours_scales",
        "decode_ours_windows",
    ):
        assert figures[f"{name}_img_s"] > 0
    assert figures["ours_vs_ceiling"] == pytest.approx(
        figures["ours_img_s"] / figures["decode_ours_scales_img_s"]
    )
    assert figures["ours_vs_window_ceiling"] == pytest.approx(
        figures["ours_img_s"] / figures["decode_ours_windows_img_s"]
    )
    assert sum(figures["ours_dct_scales"].values()) == pytest.approx(1.0)
    assert run.manifest()["config"]["data"] == "tiny/v001"


def test_bench_loader_draws_imagenet_sized_images_without_a_dataset(vgg, runs_root) -> None:
    args = ["--images", "20", "--batch", "10", "--repeats", "1", "--pass-images", "20"]
    result = vgg("bench", "loader", *args)
    assert result.exit_code == 0, result.output
    figures = json.loads((resolve("bench-loader", runs_root).path / "results.json").read_text())
    assert figures["median_sides"] == [375, 500]
    assert 50 < figures["mean_jpeg_kb"] < 200
    assert figures["ours_dct_scales"] == {"8/8": 1.0}  # S=256 from 375 px needs every pixel


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "200"], "below the crop size 224"),
        (["--data", "nothing-here"], "nothing-here"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_bench_loader_options_are_one_line_errors(vgg, train_root, args, message) -> None:
    result = vgg("bench", "loader", *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_an_interrupted_scheme_2_run_resumes_with_full_size_decoding(vgg, train_root) -> None:
    """A version started before reduced-scale decoding (scheme 2) and interrupted:
    re-running its command resumes it under scheme 2; a new run gets scheme 3."""
    tiny = ["--width", "0.0625", "--crop", "32", "--batch-size", "16", "--scale", "40"]
    assert vgg("train", "--net", "A", *tiny, "--epochs", "1").exit_code == 0
    manifest_path = resolve("A", train_root).path / "manifest.json"
    assert json.loads(manifest_path.read_text())["config"]["augmentation"] == 3

    def killed_under_scheme_2(manifest: dict) -> None:
        manifest["config"]["augmentation"], manifest["status"] = 2, "running"

    edit_manifest(manifest_path.parent, killed_under_scheme_2)
    result = vgg("train", "--net", "A", *tiny, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "(resuming)" in result.output
    resumed = resolve("A", train_root).manifest()
    assert resumed["version"] == "v001" and resumed["attempts"] == 2
    assert resumed["config"]["augmentation"] == 2


@pytest.mark.parametrize(
    "command", [["train", "--net", "A", "--dry-run"], ["finetune-scale", "no-such-run"]]
)
def test_an_unknown_decode_path_is_refused_before_any_plan(vgg, train_root, command) -> None:
    result = vgg(*command, "--scale", "64", "--decode", "nvjpeg")
    assert result.exit_code == 2 and "--decode" in result.output
    assert "choose auto, ffcv, torch, gpu" in result.output and "Traceback" not in result.output


def test_ffcvs_import_keeps_its_typed_dict_compiles_on_disk(tmp_path) -> None:
    """vggcli.data.numba_cache: the first process compiles the numba typed-dict code that
    FFCV's import needs and stores it; the next loads it (about 2 s of every start saved)."""
    code = (
        "import vggcli.data.beton; from numba.typed import typeddict; "
        "stats = typeddict._make_dict.stats; "
        "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def hits_and_misses() -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return [int(n) for n in out.stdout.split()]

    assert hits_and_misses() == [0, 1]
    assert list(tmp_path.rglob("*.nbi"))  # the index of what was stored
    assert hits_and_misses() == [1, 0]
