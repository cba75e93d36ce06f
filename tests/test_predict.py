"""`vgg predict` and `vgg features`: any image file in, the numbers evaluation and Appendix B
define out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from typer.testing import CliRunner, Result

from tests.test_train import TINY
from vggcli.artifacts import ModelRun, resolve_as
from vggcli.checkpoints import load_model
from vggcli.cli import app
from vggcli.data.image_files import read_rgb
from vggcli.errors import VggError
from vggcli.eval_settings import EvalSettings
from vggcli.evaluate import Evaluator, rescale
from vggcli.files import writing_new
from vggcli.stages import predict

ORIENTATION = 0x0112  # the EXIF tag


@pytest.fixture(scope="module")
def root(dataset_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs root with a tiny trained net A (two steps are enough: only the arithmetic
    is under test), shared by this module's tests, which write no runs."""
    runs = tmp_path_factory.mktemp("predict") / "runs"
    shutil.copytree(dataset_runs, runs)
    args = ["train", "--net", "A", "--scale", "48", "--epochs", "1", "--max-steps", "2", *TINY]
    result = _vgg(runs, *args)
    assert result.exit_code == 0, result.output
    return runs


def _vgg(runs: Path, *args: str) -> Result:
    env = {"VGG_RUNS": str(runs), "COLUMNS": "200", "VGG_NO_VERIFY": None}
    return CliRunner().invoke(app, list(args), env=env)


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with noise: far from symmetric, so a wrong rotation shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [x * 255 / width, y * 255 / height, (x + 2 * y) % 97 * 2.6]
    base = np.stack(channels, axis=-1) + rng.normal(0, 20, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CMYK JPEG, a grayscale PNG, an EXIF-rotated JPEG and the same pixels saved upright
    (lossless), a palette PNG with transparency, an RGBA PNG, and a text file named .jpg."""
    folder = tmp_path_factory.mktemp("pictures")
    paths = {
        name: folder / name
        for name in (
            "cmyk.jpg",
            "gray.png",
            "rotated.jpg",
            "upright.png",
            "palette.png",
            "rgba.png",
            "notes.jpg",
        )
    }
    Image.fromarray(_picture(44, 60, 0)).convert("CMYK").save(paths["cmyk.jpg"])
    Image.fromarray(_picture(50, 42, 1)).convert("L").save(paths["gray.png"])
    stored = Image.fromarray(_picture(42, 58, 2))  # landscape on disk, portrait to the eye
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(paths["rotated.jpg"], exif=exif)
    with Image.open(paths["rotated.jpg"]) as decoded:
        upright = decoded.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    upright.save(paths["upright.png"])
    palette = Image.fromarray(_picture(40, 40, 3)).quantize(16)
    palette.info["transparency"] = 0
    palette.save(paths["palette.png"], transparency=0)
    rgba = np.dstack([_picture(40, 52, 4), np.full((40, 52), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(paths["rgba.png"])
    paths["notes.jpg"].write_text("not a picture\n")
    return paths


def test_any_mode_reads_as_upright_rgb(pictures) -> None:
    assert read_rgb(pictures["cmyk.jpg"]).shape == (44, 60, 3)
    gray = read_rgb(pictures["gray.png"])
    assert gray.shape == (50, 42, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    assert read_rgb(pictures["palette.png"]).shape == (40, 40, 3)
    assert read_rgb(pictures["rgba.png"]).shape == (40, 52, 3)
    rotated = read_rgb(pictures["rotated.jpg"])
    assert rotated.shape == (58, 42, 3)  # the tag applied: portrait
    assert np.array_equal(rotated, read_rgb(pictures["upright.png"]))


def test_predict_gives_evaluates_posteriors_for_any_file(root, pictures) -> None:
    names = ["cmyk.jpg", "gray.png", "rotated.jpg", "upright.png", "palette.png", "rgba.png"]
    files = tuple(pictures[n] for n in names)
    request = predict.PredictRequest("A", files, precision="fp32", device="cpu")
    result = predict.run(request, root)
    assert result.model == "A/v001" and result.settings.scales == (43, 48, 53)
    model_run = resolve_as("A", root, ModelRun)
    model, _ = load_model(model_run)
    settings = EvalSettings("dense", result.settings.scales, 32, "fp32", flip=True)
    evaluator = Evaluator(model, settings, torch.device("cpu"))
    for row, path in enumerate(files):
        image = read_rgb(path)
        expected = np.mean(
            [evaluator.dense(rescale(image, q)[None])[0] for q in settings.scales], 0
        )
        np.testing.assert_allclose(result.posteriors[row], expected, rtol=1e-6, atol=1e-7)
    rotated, upright = result.posteriors[2], result.posteriors[3]
    np.testing.assert_array_equal(rotated, upright)
    sideways = np.asarray(Image.open(pictures["rotated.jpg"]).convert("RGB"))
    unturned = np.mean([evaluator.dense(rescale(sideways, q)[None])[0] for q in settings.scales], 0)
    assert not np.allclose(unturned, rotated, atol=1e-4)  # the tag made a difference
    top = result.top(0, 3)
    assert [t["rank"] for t in top] == [1, 2, 3]
    assert top[0]["probability"] == result.posteriors[0].max()
    assert top[0]["wnid"] == model_run.classes(root)[int(result.posteriors[0].argmax())]["wnid"]


def test_predict_cli_json_table_and_modes(root, pictures) -> None:
    files = [str(pictures["cmyk.jpg"]), str(pictures["gray.png"])]
    args = ["predict", "A", *files, "--precision", "fp32", "--device", "cpu"]
    result = _vgg(root, *args, "--json", "--top", "3", "--scales", "40,56")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # nothing else on stdout
    assert [d["image"] for d in document] == files
    assert [len(d["top"]) for d in document] == [3, 3]
    first = document[0]["top"][0]
    assert set(first) == {"rank", "wnid", "name", "probability"} and first["rank"] == 1
    assert "model: A/v001" in result.stderr  # which version answered, off stdout
    request = predict.PredictRequest(
        "A", (pictures["cmyk.jpg"],), scales=(40, 56), precision="fp32", device="cpu"
    )
    assert first["probability"] == pytest.approx(predict.run(request, root).posteriors[0].max())
    table = _vgg(root, *args, "--mode", "dense+crop", "--top", "20")
    assert table.exit_code == 0, table.output
    assert str(pictures["gray.png"]) in table.stdout and "probability" in table.stdout
    assert table.stdout.count("│ 10 ") == 2  # 10 classes listed per image, no more
    assert not list(root.glob("A-eval*"))  # a query writes no run


def test_a_bad_file_fails_in_one_line_before_any_compute(root, pictures, tmp_path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(pictures["cmyk.jpg"].read_bytes()[:400])
    (tmp_path / "empty").mkdir()
    for bad, message in (
        (pictures["notes.jpg"], "not a readable image"),
        (truncated, "truncated"),
        (tmp_path / "missing.png", "no such file"),
        (tmp_path / "empty", "no .jpg/.jpeg/.png files"),
    ):
        result = _vgg(root, "predict", "A", str(pictures["gray.png"]), str(bad))
        assert result.exit_code != 0, result.output
        assert "Traceback" not in result.output and "model:" not in result.output
        (line,) = result.stderr.strip().splitlines()  # the error alone, no bar left over
        assert line.startswith("error:") and str(bad) in line and message in line, line
    result = _vgg(root, "predict", "A", str(pictures["gray.png"]), "--mode", "centre")
    assert result.exit_code == 2 and "Invalid value for '--mode'" in result.output


def _hand_descriptor(model, image: np.ndarray, scales: tuple[int, ...]) -> list[np.ndarray]:
    """fc7 by the model's layers one by one: conv stack, every k x k window through fc6-relu-
    fc7-relu, mean over windows, mean with the mirror; one vector per scale."""
    head, per_scale = model.head, []
    for q in scales:
        views = []
        for pixels in (rescale(image, q), rescale(image, q)[:, ::-1]):
            x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                conv = model.features(
                    (x - model.mean.view(1, 3, 1, 1)) / model.std.view(1, 3, 1, 1)
                )
                windows = F.unfold(conv, head.kernel)[0].T  # (windows, C*k*k)
                fc7 = torch.relu(head.fc7(torch.relu(head.fc6(windows))))
            views.append(fc7.numpy().astype(np.float64).mean(axis=0))
        per_scale.append(np.mean(views, axis=0))
    return per_scale


def _l2(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_features_are_appendix_bs_fc7_descriptor(root, pictures, tmp_path) -> None:
    folder = tmp_path / "photos"
    (folder / "b" / ".cache").mkdir(parents=True)
    shutil.copy(pictures["rotated.jpg"], folder / "b" / "z.JPG")
    shutil.copy(pictures["cmyk.jpg"], folder / "a.jpeg")
    shutil.copy(pictures["gray.png"], folder / "b" / "c.png")
    shutil.copy(pictures["gray.png"], folder / "b" / ".cache" / "skipped.png")
    (folder / "readme.txt").write_text("not an image, not searched for")
    order = [folder / "a.jpeg", folder / "b" / "c.png", folder / "b" / "z.JPG"]
    common = ["--scales", "40,56", "--precision", "fp32", "--device", "cpu"]
    out = tmp_path / "feats.npy"
    result = _vgg(root, "features", "A", str(folder), "--out", str(out), *common)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"done: {out}"
    listing = json.loads(out.with_suffix(".json").read_text())
    assert listing["images"] == [str(p) for p in order]
    assert listing["model"] == "A/v001" and listing["layer"] == "fc7"
    descriptors = np.load(out)
    assert descriptors.dtype == np.float32 and descriptors.shape == (3, 256)  # fc7 at width 1/16
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1, atol=1e-6)
    model, _ = load_model(resolve_as("A", root, ModelRun))
    model.eval()
    hand = [_hand_descriptor(model, read_rgb(p), (40, 56)) for p in order]
    expected = np.stack([_l2(np.mean(scales, axis=0)) for scales in hand])
    np.testing.assert_allclose(descriptors, expected, atol=2e-6)

    stacked = tmp_path / "stacked.npy"
    result = _vgg(
        root, "features", "A", *map(str, order), "--out", str(stacked), "--stack", *common
    )
    assert result.exit_code == 0, result.output
    expected = np.stack([_l2(np.concatenate(scales)) for scales in hand])
    np.testing.assert_allclose(np.load(stacked), expected, atol=2e-6)

    result = _vgg(root, "features", "A", str(folder), "--out", str(out), *common)
    assert result.exit_code == 2 and "exists" in result.stderr and "Traceback" not in result.output
    pool5 = tmp_path / "pool5.npy"
    result = _vgg(root, "features", "A", str(folder), "--out", str(pool5), "--conv5", *common)
    assert result.exit_code == 0, result.output
    assert np.load(pool5).shape == (3, 32)
    assert json.loads(pool5.with_suffix(".json").read_text())["layer"] == "pool5"
    result = _vgg(root, "features", "A", str(folder), "--out", str(tmp_path / "x.csv"))
    assert result.exit_code == 2 and "--out: must name a .npy file" in result.stderr


def test_an_output_that_appears_meanwhile_is_not_overwritten(tmp_path) -> None:
    target = tmp_path / "feats.npy"
    with pytest.raises(FileExistsError), writing_new(target) as fh:
        fh.write(b"new")
        target.write_bytes(b"old")  # another process got there first
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with writing_new(tmp_path / "fresh.npy") as fh:
        fh.write(b"new")
    assert (tmp_path / "fresh.npy").read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 2


def test_features_write_both_files_or_neither(tmp_path) -> None:
    """A list that appeared meanwhile takes the new .npy away with it: no half output."""
    from vggcli.stages.features import _write

    out, listing = tmp_path / "feats.npy", tmp_path / "feats.json"
    listing.write_text("someone else's")
    with pytest.raises(VggError, match="appeared while the features were computed"):
        _write(out, listing, np.zeros((2, 3), dtype=np.float32), {"images": []})
    assert not out.exists() and listing.read_text() == "someone else's"
    _write(tmp_path / "ok.npy", tmp_path / "ok.json", np.ones((1, 2), np.float32), {"n": 1})
    assert np.load(tmp_path / "ok.npy").shape == (1, 2)
    assert json.loads((tmp_path / "ok.json").read_text()) == {"n": 1}
