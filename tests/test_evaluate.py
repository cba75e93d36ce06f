"""`vgg evaluate` and `vgg fuse`: exact dense/crop geometry, error arithmetic, runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_train import TINY
from vggcli.errors import VggError
from vggcli.eval_settings import EvalSettings, Mode, default_scales
from vggcli.evaluate import (
    Evaluator,
    assemble,
    centre_view,
    crop_views,
    evaluate_method,
    grid_offsets,
    method_batches,
    prepared_ahead,
    rescale,
    rescaled_size,
    to_tensor,
)
from vggcli.fuse import average, check_compatible
from vggcli.metrics import topk_errors
from vggcli.models import VGG, NetSpec, initialise
from vggcli.runs import resolve


def _evaluator(crop: int = 224) -> Evaluator:
    torch.manual_seed(0)
    model = VGG(NetSpec("A", num_classes=10, width=1 / 16, crop=crop))
    initialise(model, "kaiming")
    model.set_normalisation([120.0, 110.0, 100.0])
    settings = EvalSettings("dense", (crop,), crop, precision="fp32")
    return Evaluator(model, settings, torch.device("cpu"))


def test_dense_equals_crop_on_a_crop_sized_image() -> None:
    evaluator = _evaluator()
    image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    dense = evaluator.dense(image)
    crops = evaluator.views(crop_views(image[0], 224), 50)  # 25 identical crops + mirrors
    np.testing.assert_allclose(dense, crops, rtol=1e-4, atol=1e-6)
    logits_dense = evaluator.model.score_map(to_tensor(image, evaluator.device)).flatten(1)
    fc_path = evaluator.model(to_tensor(image, evaluator.device))
    torch.testing.assert_close(logits_dense, fc_path, rtol=1e-4, atol=1e-3)


def test_multi_crop_gives_150_views_over_three_scales_on_a_regular_grid() -> None:
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    views = [crop_views(rescale(image, q), 224) for q in (256, 384, 512)]
    assert [len(v) for v in views] == [50, 50, 50] and sum(len(v) for v in views) == 150
    assert grid_offsets(341, 224) == [0, 29, 58, 88, 117]  # both borders, evenly spaced
    scaled = rescale(image, 384)
    assert scaled.shape[:2] == (384, 512)
    first, last = views[1][0], views[1][24]
    assert np.array_equal(first, scaled[:224, :224])
    assert np.array_equal(last, scaled[384 - 224 :, 512 - 224 :])
    assert np.array_equal(views[1][25], first[:, ::-1])  # the mirror of each crop follows


def test_rescale_keeps_aspect_and_puts_q_on_the_smallest_side() -> None:
    assert rescaled_size(300, 400, 256) == (256, 341)
    assert rescaled_size(400, 300, 256) == (341, 256)
    assert default_scales(256, 256, False) == (256,)
    assert default_scales(256, 256, True) == (224, 256, 288)
    assert default_scales(256, 512, False) == (384,)
    assert default_scales(256, 512, True) == (256, 384, 512)
    assert default_scales(96, 96, True, crop=64) == (87, 96, 105)
    # trained at S = crop: S-9 would be below the crop (predict's and fuse's multi-scale
    # default refused every such model: "Q=55 is smaller than the crop")
    assert default_scales(64, 64, True, crop=64) == (64, 73)


def test_topk_errors_on_hand_made_cases_with_ties() -> None:
    scores = np.array(
        [
            [0.1, 0.7, 0.2],  # right
            [0.5, 0.3, 0.2],  # wrong at top-1, right at top-2
            [0.4, 0.4, 0.2],  # tie with the true class 0: counts against
            [1 / 3, 1 / 3, 1 / 3],  # constant prediction: never right at top-1 or top-2
        ]
    )
    labels = np.array([1, 1, 0, 2])
    errors = topk_errors(scores, labels, (1, 2, 3))
    assert errors[1] == pytest.approx(3 / 4)
    assert errors[2] == pytest.approx(1 / 4)
    assert errors[3] == 0.0


def test_fusion_averages_posteriors_with_equal_weights() -> None:
    a = np.array([[0.6, 0.4], [0.2, 0.8]])
    b = np.array([[0.2, 0.8], [0.4, 0.6]])
    fused = average([a, b])
    np.testing.assert_allclose(fused, [[0.4, 0.6], [0.3, 0.7]])
    assert topk_errors(fused, np.array([1, 1]), (1,))[1] == 0.0
    with pytest.raises(VggError, match="different shapes"):
        average([a, a[:1]])
    member = {
        "model": "D/v1",
        "dataset": "in/v1",
        "val_index_sha256": "x",
        "num_images": 2,
        "num_classes": 2,
    }
    with pytest.raises(VggError, match="different dataset"):
        check_compatible([member, {**member, "model": "E/v1", "dataset": "in/v2"}])


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(VggError, match="unknown mode"):
        EvalSettings("sideways", (256,), 224)
    with pytest.raises(VggError, match="smaller than the crop"):
        EvalSettings("dense", (192,), 224)


def test_evaluate_agrees_with_training_validation_and_fuse_writes_a_run(vgg, train_root):
    args = ["--scale", "48", "--epochs", "2", *TINY]
    assert vgg("train", "--net", "A", *args).exit_code == 0
    assert vgg("train", "--net", "B", *args).exit_code == 0
    trained = resolve("A", train_root)
    result = vgg("evaluate", str(train_root / "A"), "--mode", "centre")
    assert result.exit_code == 0, result.output
    centre = resolve("A-eval", train_root)
    (row,) = centre.results()["errors"]
    assert row["top1_err"] == trained.results()["training"]["val_top1_err"]  # same pixels
    assert centre.manifest()["parents"][0]["version"] == "v001"
    result = vgg("evaluate", str(train_root / "A"), "--mode", "dense+crop", "--multi-scale")
    assert result.exit_code == 0, result.output
    evaluation = resolve("A-eval", train_root)
    assert evaluation.manifest()["config"]["scales"] == [43, 48, 53]  # 48 +- 32 * 32 / 224
    posteriors = np.load(evaluation.output("dense+crop.npy"))
    assert posteriors.dtype == np.float32 and posteriors.shape == (50, 10)
    np.testing.assert_allclose(posteriors.sum(axis=1), 1, atol=1e-5)
    # what the stored file scores is exactly what the in-memory numbers scored
    labels = np.load(evaluation.output("labels.npy"))
    row = next(r for r in evaluation.results()["errors"] if r["method"] == "dense+crop")
    assert topk_errors(posteriors, labels) == {1: row["top1_err"], 5: row["top5_err"]}
    assert {r["method"] for r in evaluation.results()["errors"]} == {"dense", "crop", "dense+crop"}
    fused = vgg("fuse", str(train_root / "A"), str(train_root / "B"), "--mode", "dense+crop")
    assert fused.exit_code == 0, fused.output
    fusion = resolve("fuse-A+B", train_root)
    members = [resolve("A-eval", train_root), resolve("B-eval", train_root)]
    expected = np.mean(
        [np.load(m.output("dense+crop.npy")).astype(np.float64) for m in members], axis=0
    )
    np.testing.assert_allclose(np.load(fusion.output("dense+crop.npy")), expected, atol=1e-6)
    names = [r["name"] for r in fusion.results()["errors"]]
    assert names == ["A/v001", "B/v001", "fusion"]
    # the A member reused the stored posteriors instead of evaluating again
    assert len(list((train_root / "A-eval").iterdir())) == 2 + 1  # v001, v002, .lock


def test_evaluate_and_fuse_bad_input(vgg, train_root) -> None:
    result = vgg("evaluate", str(train_root / "tiny"))
    assert result.exit_code == 2 and "not a trained model run" in result.output
    assert vgg("train", "--net", "A", "--scale", "40", "--epochs", "1", *TINY).exit_code == 0
    for args, message in (
        (["--mode", "sideways"], "Invalid value for '--mode'"),
        (["--scales", "24"], "smaller than the crop"),
        (["--scales", "a,b"], "comma-separated"),
    ):
        result = vgg("evaluate", str(train_root / "A"), *args)
        assert result.exit_code == 2 and message in result.output, result.output
    result = vgg("fuse", str(train_root / "A"), str(train_root / "tiny"))
    assert result.exit_code == 2 and "not a trained model run" in result.output
    result = vgg("fuse", str(train_root / "A"), str(train_root / "A"), "--mode", "centre")
    assert result.exit_code == 2 and "'--mode': choose dense, crop, dense+crop," in result.output


def test_no_flip_evaluates_the_image_alone() -> None:
    evaluator = _evaluator(crop=64)
    image = np.random.default_rng(2).integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    alone = evaluator.posteriors(to_tensor(image, evaluator.device), True).numpy()
    mirror = evaluator.posteriors(to_tensor(image[:, :, ::-1], evaluator.device), True).numpy()
    np.testing.assert_allclose(evaluator.dense(image), (alone + mirror) / 2, rtol=1e-3, atol=1e-6)
    evaluator.settings = EvalSettings("crop", (96,), 64, precision="fp32", flip=False)
    np.testing.assert_allclose(evaluator.dense(image), alone, rtol=1e-6)
    assert crop_views(image[0], 64, flip=False).shape == (25, 64, 64, 3)


def test_no_flip_at_training_follows_the_model_into_evaluation(vgg, train_root) -> None:
    args = ["--net", "A", "--scale", "40", "--epochs", "1", "--max-steps", "2", *TINY]
    assert vgg("train", *args, "--no-flip").exit_code == 0
    model = resolve("A", train_root)
    assert model.manifest()["config"]["recipe"]["flip"] is False
    assert vgg("evaluate", "A").exit_code == 0
    assert resolve("A-eval", train_root).manifest()["config"]["flip"] is False
    assert vgg("evaluate", "A", "--flip", "--name", "A-flip").exit_code == 0
    assert "flip" not in resolve("A-flip", train_root).manifest()["config"]


def test_centre_view_gives_exactly_the_training_validation_pixels(dataset_runs) -> None:
    from vggcli.data.beton import BetonImages
    from vggcli.data.loader import make_loader
    from vggcli.data.sampling import LoaderSpec
    from vggcli.evaluate import centre_view

    beton = resolve("tiny", dataset_runs).output("val.beton")
    images = BetonImages(beton)
    spec = LoaderSpec(beton, 10, crop=32, s_min=40, s_max=40, seed=0, train=False, workers=1)
    loader, order = make_loader(spec)
    order.start(0)
    # copies: FFCV reuses its batch buffers once the loop moves on
    batches = [images_.permute(0, 2, 3, 1).numpy().copy() for images_, _ in loader]
    trained_on = np.concatenate(batches)
    ours = np.concatenate([centre_view(images[i], 32, 40) for i in range(len(images))])
    assert trained_on.shape == ours.shape == (len(images), 32, 32, 3)
    assert np.array_equal(trained_on, ours)


def test_evaluation_gets_every_core_back_after_ffcv_took_them() -> None:
    """Importing FFCV sets torch to one thread; the device pick every stage makes gives the
    process's cores back (half of them were idle during evaluation on 2 cores)."""
    import os

    import ffcv.pipeline.compiler  # noqa: F401  (the import that sets torch.set_num_threads(1))
    import torch

    from vggcli import device

    torch.set_num_threads(1)  # as that import left it, whatever imported FFCV first
    device.pick("cpu")
    expected = int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    assert torch.get_num_threads() == expected


# -- input prepared beside the model: the same posteriors, bit for bit ------------------------
def _serial(evaluator: Evaluator, images, method: Mode, q: int) -> np.ndarray:
    """The plain serial computation, written out as evaluation did before the input moved
    to background threads: stack, concatenate mirrors, one tensor per batch. Rows in
    image order."""
    settings = evaluator.settings
    flip, crop = settings.flip, settings.crop
    rows, done = [], []
    for indices in method_batches(images.shapes, method, q, settings.batch):
        done += indices
        if method == Mode.DENSE:
            stacked = np.stack([rescale(images[i], q) for i in indices])
            views = np.concatenate([stacked, stacked[:, :, ::-1]]) if flip else stacked
        elif method == Mode.CROP:
            views = np.concatenate([_grid(rescale(images[i], q), crop, flip) for i in indices])
        else:
            views = np.concatenate([centre_view(images[i], crop, q) for i in indices])
        probs = torch.cat(
            [
                evaluator.posteriors(
                    to_tensor(views[i : i + 256], evaluator.device), method == Mode.DENSE
                )
                for i in range(0, len(views), 256)
            ]
        )
        if method == Mode.DENSE:
            rows.append(((probs[: len(indices)] + probs[len(indices) :]) / 2) if flip else probs)
        else:
            rows.append(probs.view(len(indices), -1, probs.shape[1]).mean(1))
    out = np.zeros((len(images), evaluator.model.spec.num_classes), dtype=np.float32)
    out[done] = torch.cat(rows).numpy()
    return out


def _grid(image: np.ndarray, crop: int, flip: bool) -> np.ndarray:
    crops = np.stack(
        [
            image[t : t + crop, s : s + crop]
            for t in grid_offsets(image.shape[0], crop)
            for s in grid_offsets(image.shape[1], crop)
        ]
    )
    return np.concatenate([crops, crops[:, :, ::-1]]) if flip else crops


def _tiny_evaluator(flip: bool, workers: int) -> Evaluator:
    torch.manual_seed(0)
    model = VGG(NetSpec("A", num_classes=10, width=1 / 16, crop=32))
    initialise(model, "kaiming")
    model.set_normalisation([120.0, 110.0, 100.0])
    settings = EvalSettings("dense", (40,), 32, precision="fp32", batch=3, flip=flip)
    return Evaluator(model, settings, torch.device("cpu"), workers)


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("method", [Mode.DENSE, Mode.CROP, Mode.CENTRE])
def test_input_prepared_in_background_threads_gives_the_serial_posteriors_bit_for_bit(
    dataset_runs, method: Mode, flip: bool
) -> None:
    """The .beton's JPEGs decoded, rescaled and cut into views by 0, 1 or 2 threads beside
    the model, and by two ranks taking every other batch: identical to the serial path."""
    from vggcli.data.beton import BetonImages

    images = BetonImages(resolve("tiny", dataset_runs).output("val.beton"))
    expected = _serial(_tiny_evaluator(flip, 0), images, method, 40)
    for workers in (0, 1, 2):
        indices, probs = evaluate_method(
            _tiny_evaluator(flip, workers), images, method, 40, lambda n: None
        )
        assert np.array_equal(assemble([(indices, probs)], len(images)), expected), workers
    ranks = [
        evaluate_method(_tiny_evaluator(flip, 1), images, method, 40, lambda n: None, rank, 2)
        for rank in (0, 1)
    ]
    assert np.array_equal(assemble(ranks, len(images)), expected)
    assert images.failed == set()


def test_a_jpeg_that_fails_to_decode_in_a_background_thread_is_counted(
    dataset_runs, tmp_path
) -> None:
    from ffcv.reader import Reader

    from vggcli.data.beton import BetonImages

    beton = tmp_path / "val.beton"
    beton.write_bytes(resolve("tiny", dataset_runs).output("val.beton").read_bytes())
    start = int(Reader(str(beton)).metadata[3]["f0"]["data_ptr"])
    with open(beton, "r+b") as fh:  # the JPEG header of image 3 zeroed
        fh.seek(start + 2)
        fh.write(bytes(38))
    serial, threaded = BetonImages(beton), BetonImages(beton)
    expected = _serial(_tiny_evaluator(True, 0), serial, Mode.DENSE, 40)
    part = evaluate_method(_tiny_evaluator(True, 2), threaded, Mode.DENSE, 40, lambda n: None)
    assert serial.failed == threaded.failed == {3}
    assert np.array_equal(assemble([part], len(threaded)), expected)


def test_prepared_ahead_keeps_the_order_and_raises_at_the_failing_batch() -> None:
    def prepare(batch: int) -> int:
        if batch == 5:
            raise VggError("image 5 changed while it was being read")
        return batch * 10

    for workers in (0, 1, 3):
        assert list(prepared_ahead(range(5), prepare, workers)) == [(b, b * 10) for b in range(5)]
        seen = []
        with pytest.raises(VggError, match="image 5 changed"):
            for batch, _ in prepared_ahead(range(8), prepare, workers):
                seen.append(batch)
        assert seen == [0, 1, 2, 3, 4]
