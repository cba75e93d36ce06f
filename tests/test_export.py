"""`vgg export`: the crop and dense classifiers, as ONNX in onnxruntime and as TorchScript,
give PyTorch's posteriors; the dense one is exactly the evaluator's dense method for one
image; the command writes a versioned run with its parent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import vgg_process
from vggcli.artifacts import ExportRun, Kind, ModelRun
from vggcli.checkpoints import load_model, model_payload, save
from vggcli.eval_settings import EvalSettings
from vggcli.evaluate import Evaluator
from vggcli.export import CropClassifier, DenseClassifier, classifiers
from vggcli.models import VGG, NetSpec, initialise
from vggcli.runs import RunWriter, resolve

SPEC = NetSpec("A", num_classes=5, width=1 / 16, crop=64, input_scale=1 / 64)
# Crop batch, then dense images: square at the crop, non-square both ways, odd sides
DENSE_SIZES = [(64, 64), (96, 160), (161, 97)]
CLASSES = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(5)]


def _model() -> VGG:
    """A small net whose posteriors are spread out (fc8 at std 0.05: logits of std ~1), so
    that a 1e-4 agreement on posteriors is a real check, not two saturated one-hots."""
    torch.manual_seed(0)
    model = VGG(SPEC)
    initialise(model, "kaiming", last_std=0.05)
    model.set_normalisation([120.0, 110.0, 100.0], [60.0, 64.0, 68.0])
    return model.eval()


def _images(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(*shape, generator=generator) * 255 for shape in shapes]


def _write_runs(root: Path) -> None:
    """A dataset run holding only its classes and a model run trained on it, by hand (the
    export reads no more of them)."""
    with RunWriter.open(root, "tiny", kind=Kind.DATASET, config={}) as dataset:
        dataset.write_json("classes.json", CLASSES)
    config = {"net": SPEC.as_dict(), "dataset": dataset.version.label, "recipe": {"flip": True}}
    with RunWriter.open(root, "A", kind=Kind.MODEL, config=config) as model:
        save(model, ModelRun.WEIGHTS, model_payload(_model(), {"stage": "A"}))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs root whose model run A the real command exported twice: A-export/v001 as
    ONNX, A-export/v002 as TorchScript."""
    root = tmp_path_factory.mktemp("export") / "runs"
    _write_runs(root)
    for fmt in ("onnx", "torchscript"):
        # its own process, as users run it: in a pytest worker that had run other modules,
        # torch.export's parse once hit CPython 3.11's "AST constructor recursion depth
        # mismatch" (a SystemError of the interpreter's state, not of the export)
        process = vgg_process("export", "A", "--format", fmt, runs_root=root)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    return root


def _pytorch(root: Path) -> dict[str, CropClassifier | DenseClassifier]:
    """The classifiers from the exported model run's own weights."""
    model, _ = load_model(ModelRun(resolve("A", root)))
    return classifiers(model)


def _expected(root: Path) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """The test inputs (a batch of 3 crops, then the dense images) and PyTorch's posteriors."""
    reference = _pytorch(root)
    crops, *dense = _images((3, 3, 64, 64), *[(1, 3, h, w) for h, w in DENSE_SIZES])
    with torch.no_grad():
        want = [reference["crop"](crops).numpy()] + [reference["dense"](x).numpy() for x in dense]
    assert max(p.max() for p in want) < 0.9 and min(p.min() for p in want) > 1e-3
    return [crops, *dense], want


def test_export_writes_a_run_with_both_files_its_parent_and_what_they_take(exported) -> None:
    for number, fmt, suffix in ((1, "onnx", ".onnx"), (2, "torchscript", ".pt")):
        version = resolve(f"A-export/v00{number}", exported)
        run = ExportRun(version)
        assert run.kind == Kind.EXPORT and version.manifest()["kind"] == "export"
        assert (run.model(), run.format()) == ("A/v001", fmt)
        assert [(p["run"], p["version"]) for p in version.manifest()["parents"]] == [("A", "v001")]
        assert sorted(version.manifest()["outputs"]) == sorted(
            ["crop" + suffix, "dense" + suffix, ExportRun.DESCRIPTION]
        )
        described = json.loads(run.file(ExportRun.DESCRIPTION).read_text())
        facts = (described["model"], described["crop"], described["num_classes"])
        assert facts == ("A/v001", 64, 5)
        assert described["input"]["mean"] == [120.0, 110.0, 100.0]
        assert described["input"]["std"] == [60.0, 64.0, 68.0]
        assert described["files"]["dense" + suffix]["input_shape"] == [1, 3, "H", "W"]
        assert "mirror" in described["files"]["dense" + suffix]["what"]
        assert described["mirror_averaging"] is True
        assert described["classes"] == CLASSES
        assert run.classifier("dense").exists()


def test_onnx_crop_and_dense_agree_with_pytorch_in_onnxruntime(exported) -> None:
    """fp32, 1e-4 on posteriors, the dense model at sizes it was not exported with
    (non-square both ways), the crop model at a batch size it was not exported with."""
    import onnxruntime

    run = ExportRun(resolve("A-export/v001", exported))
    sessions = {
        which: onnxruntime.InferenceSession(
            str(run.classifier(which)), providers=["CPUExecutionProvider"]
        )
        for which in ("crop", "dense")
    }
    (dense_input,) = sessions["dense"].get_inputs()
    assert (dense_input.name, dense_input.shape) == ("image", [1, 3, "height", "width"])
    assert sessions["crop"].get_inputs()[0].shape == ["batch", 3, 64, 64]
    inputs, want = _expected(exported)
    for index, (x, expected) in enumerate(zip(inputs, want, strict=True)):
        session = sessions["crop" if index == 0 else "dense"]
        (got,) = session.run(["posteriors"], {"image": x.numpy()})
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_crop_and_dense_agree_with_pytorch(exported) -> None:
    """Scripted, not traced: the dense model takes sizes it never saw."""
    run = ExportRun(resolve("A-export/v002", exported))
    loaded = {which: torch.jit.load(str(run.classifier(which))) for which in ("crop", "dense")}
    inputs, want = _expected(exported)
    with torch.no_grad():
        for index, (x, expected) in enumerate(zip(inputs, want, strict=True)):
            got = loaded["crop" if index == 0 else "dense"](x).numpy()
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_dense_classifier_is_the_evaluators_dense_posterior_of_one_image() -> None:
    """softmax(mean over positions of VGG.score_map), computed as convolutions, equals the
    unfold path and `Evaluator.dense` without the mirror, on a non-square image."""
    model = _model()
    dense = DenseClassifier(model)
    (x,) = _images((1, 3, 96, 160))
    with torch.no_grad():
        via_unfold = torch.softmax(model.score_map(x).mean(dim=(2, 3)), dim=1)
        torch.testing.assert_close(dense(x), via_unfold, rtol=0, atol=1e-6)
        features = model.features(model.normalised(x))
        scores = model.head.conv_score_map(features)
        assert scores.shape == (1, 5, 2, 4)  # a real map: averaging is tested
        torch.testing.assert_close(scores, model.head.score_map(features), rtol=1e-4, atol=1e-5)
    settings = EvalSettings("dense", (96,), 64, precision="fp32", flip=False)
    evaluator = Evaluator(model, settings, torch.device("cpu"))
    image = x[0].permute(1, 2, 0).numpy()[None]  # the evaluator takes N, H, W, 3
    np.testing.assert_allclose(evaluator.dense(image), via_unfold.numpy(), rtol=0, atol=1e-6)


def test_export_errors_are_one_line(vgg, runs_root: Path, monkeypatch) -> None:
    """A non-model run, an unknown format, a missing exporter: one red line each, no run
    written."""
    _write_runs(runs_root)
    result = vgg("export", "tiny")
    assert result.exit_code == 2
    assert result.output.strip() == "error: tiny/v001 is a dataset run, not a trained model run"
    result = vgg("export", "A", "--format", "tflite")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: Invalid value for '--format': choose onnx, torchscript, not 'tflite' "
        "(see 'vgg export --help')"
    )
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    result = vgg("export", "A")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: --format: onnx needs the onnx and onnxscript")
    assert "export extra" in result.output
    assert not (runs_root / "A-export").exists()
