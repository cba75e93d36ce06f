"""`vgg bench train`, `evaluate` and `preprocess`: what they count is right, and they write
well-formed results (no timing is asserted: benchmarks measure, tests check)."""

from __future__ import annotations

import json
import math

import pytest

from vggcli.bench import training_flops
from vggcli.models import VGG, NetSpec
from vggcli.runs import resolve


def test_a_training_step_of_d_counts_three_forwards_of_15_5_gmacs() -> None:
    """VGG-16 (D) at 224: 15.47 G multiply-adds forward (the figure torchvision documents),
    so 2 x 15.47 GFLOP forward and about twice that backward (the first conv's input needs
    no gradient, hence a little under 3x)."""
    flops = training_flops(VGG(NetSpec("D")), 224)
    forward = 2 * 15.47e9
    assert 2.9 * forward < flops < 3.0 * forward, flops / forward


def test_bench_train_writes_rates_ratios_and_the_share_of_gemm_peak(vgg, runs_root) -> None:
    result = vgg("bench", "train", "--batch", "1", "--repeats", "1", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    figures = json.loads((resolve("bench-train", runs_root).path / "results.json").read_text())
    assert figures["gemm_bf16_tflop_s"] > 0
    assert figures["gflop_per_image"] == pytest.approx(92.6, rel=0.01)
    (row,) = figures["rows"]
    assert row["precision"] == "bf16 + channels_last"
    assert row["ratio"] == pytest.approx(row["ours_img_s"] / row["reference_img_s"])
    share = row["ours_img_s"] * figures["gflop_per_image"] / (1e3 * figures["gemm_bf16_tflop_s"])
    assert row["ours_share_of_gemm_peak"] == pytest.approx(share)


def test_bench_train_refuses_an_unknown_precision(vgg) -> None:
    result = vgg("bench", "train", "--precision", "fp16")
    assert result.exit_code != 0 and "--precision" in result.output
    assert "Traceback" not in result.output


TINY_BENCH = ("--width", "0.0625", "--images", "3", "--crop-images", "1", "--repeats", "1")


def test_bench_evaluate_writes_end_to_end_beside_model_only(vgg, runs_root) -> None:
    result = vgg("bench", "evaluate", *TINY_BENCH, "--workers", "2")
    assert result.exit_code == 0, result.output
    run = resolve("bench-evaluate", runs_root)
    results = json.loads((run.path / "results.json").read_text())
    assert results["dense_vs_crop"]["ratio_one_scale"] > 0
    overlap = results["end_to_end"]
    assert (overlap["net"], overlap["q"], overlap["workers"]) == ("A", 256, 2)
    assert [row["method"] for row in overlap["rows"]] == ["dense", "crop"]
    assert [row["images"] for row in overlap["rows"]] == [3, 1]
    for row in overlap["rows"]:
        for key in ("end_to_end_img_s", "model_only_img_s", "input_only_img_s", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0
    assert run.manifest()["config"]["images"] == 3


def test_bench_evaluate_refuses_bad_settings_before_any_work(vgg, runs_root) -> None:
    for args, message in (
        (("--images", "0"), "Invalid value for '--images'"),
        (("--workers", "-1"), "Invalid value for '--workers'"),
        (("--q", "224"), "Invalid value for '--q'"),
        (("--net", "Z"), "Invalid value for '--net'"),
    ):
        result = vgg("bench", "evaluate", *TINY_BENCH, *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (runs_root / "bench-evaluate").exists()


def test_bench_train_refuses_compile_with_several_processes_before_starting_them(vgg) -> None:
    result = vgg("bench", "train", "--compile", "--nproc", "2")
    assert result.exit_code != 0 and "--compile" in result.output
    assert "Traceback" not in result.output


def test_bench_preprocess_writes_each_pass_beside_its_ceiling_and_the_projection(
    vgg, runs_root
) -> None:
    result = vgg("bench", "preprocess", "--images", "6", "--repeats", "1")
    assert result.exit_code == 0, result.output
    figures = json.loads((resolve("bench-preprocess", runs_root).path / "results.json").read_text())
    assert (figures["images"], figures["workers"]) == (6, 1)
    for name in ("ceiling", "scan", "write"):
        assert figures[f"{name}_img_s"] == figures[f"{name}_img_s_per_core"] > 0
    assert figures["write_vs_ceiling"] == pytest.approx(
        figures["write_img_s"] / figures["ceiling_img_s"])
    sixteen, sixty_four = figures["projection"]["16_cores"], figures["projection"]["64_cores"]
    assert sixteen["hours"] == pytest.approx(4 * sixty_four["hours"])
    per_image = 1 / figures["scan_img_s"] + 1 / figures["write_img_s"]
    assert sixteen["hours"] == pytest.approx(1_331_167 * per_image / 16 / 3600)


def test_the_ceiling_encodes_what_preprocess_stores(tmp_path) -> None:
    """The ceiling's unit of work is the stored image's encode: shrunk as FFCV's field
    shrinks it (longer side to max_side), at the storage quality."""
    import cv2
    import numpy as np
    from PIL import Image

    from vggcli.data.images import fit_longer_side
    from vggcli.preprocess_bench import encode_once

    pixels = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"  # lossless, so the decoded pixels are these
    Image.fromarray(pixels).save(path)
    stored = fit_longer_side(pixels, 256)
    assert stored.shape == (192, 256, 3)
    _, expected = cv2.imencode(".jpg", stored[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert encode_once((str(path), 256, 90)) == len(expected)
    assert encode_once((str(path), None, 90)) > len(expected)
