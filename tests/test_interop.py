"""torchvision weights in: an imported run gives torchvision's numbers, on the dataset's classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import Normalize

from vggcli.artifacts import DatasetRun, EvaluationRun, ModelRun, resolve_as
from vggcli.classes import imagenet_classes, indices_for
from vggcli.data.beton import BetonImages
from vggcli.data.synthetic import SyntheticSpec, generate, wnid
from vggcli.errors import VggError
from vggcli.evaluate import centre_view
from vggcli.models import VGG, NetSpec, keep_classes
from vggcli.runs import resolve
from vggcli.stages import preprocess
from vggcli.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD, net_of, to_ours

TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
# ImageNet classes the small dataset below takes, in no particular order
SUBSET = [948, 1, 430]


def _torchvision(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)().eval()


def _their_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's preprocessing: 0-1 RGB normalised by ImageNet's mean and std."""
    with torch.no_grad():
        return model(Normalize(IMAGENET_MEAN, IMAGENET_STD)(x / 255))


@pytest.mark.parametrize("net", TORCHVISION)
def test_imported_weights_give_torchvisions_logits_and_dense_equals_crop_at_224(net) -> None:
    theirs = _torchvision(TORCHVISION[net])
    assert net_of(theirs.state_dict()) == net
    state, spec = to_ours(theirs.state_dict(), net)
    ours = VGG(spec).eval()
    ours.load_state_dict(state)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 255
    expected = _their_logits(theirs, x)
    with torch.no_grad():
        crop, dense = ours(x), ours.score_map(x).mean(dim=(2, 3))
    scale = expected.abs().max().item()
    torch.testing.assert_close(crop, expected, atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(dense, crop, atol=1e-6 * scale, rtol=0)


def test_batch_normalised_and_foreign_state_dicts_are_refused() -> None:
    with pytest.raises(VggError, match="batch-normalised"):
        net_of(torchvision.models.vgg11_bn().state_dict())
    with pytest.raises(VggError, match="not a torchvision"):
        net_of(torchvision.models.alexnet().state_dict())


def test_keeping_a_shuffled_subset_of_classes_keeps_exactly_their_logits() -> None:
    model_classes = imagenet_classes()
    dataset_classes = [model_classes[i] for i in SUBSET]  # not in the model's order
    indices = indices_for(model_classes, dataset_classes)
    assert indices == SUBSET
    assert indices_for(model_classes, model_classes) is None  # same list: nothing to map
    theirs = _torchvision("vgg11")
    state, spec = to_ours(theirs.state_dict(), "A")
    kept, kept_spec = keep_classes(state, spec, indices)
    ours = VGG(kept_spec).eval()
    ours.load_state_dict(kept)
    x = torch.rand(1, 3, 224, 224) * 255
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _their_logits(theirs, x)[:, SUBSET], atol=1e-4, rtol=0)
    with pytest.raises(VggError, match="does not know 1 of the dataset's 2 classes"):
        indices_for(model_classes, [model_classes[3], {"wnid": "n99999999"}])


@pytest.fixture(scope="module")
def imagenet_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs root with a dataset run whose classes are three ImageNet wnids (a subset,
    so the mapping by wnid is not the identity), 2 validation images each."""
    base = tmp_path_factory.mktemp("subset")
    source = base / "source"
    generate(source, SyntheticSpec(3, 2, 2, seed=3, max_side=160, val_layout="folders"))
    for c, index in enumerate(SUBSET):
        for split in ("train", "val"):
            (source / split / wnid(c)).rename(source / split / imagenet_classes()[index]["wnid"])
    (source / "LOC_synset_mapping.txt").unlink()
    config = preprocess.PreprocessConfig(source, name="subset", workers=1)
    preprocess.run(config, base / "runs")
    return base / "runs"


@pytest.fixture(scope="module")
def vgg11_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "vgg11.pth"
    torch.save(_torchvision("vgg11", seed=5).state_dict(), path)
    return path


def test_evaluate_of_imported_weights_gives_torchvisions_posteriors_over_the_datasets_classes(
    vgg, runs_root, imagenet_subset, vgg11_file
) -> None:
    shutil.copytree(imagenet_subset, runs_root)
    result = vgg("import-weights", str(vgg11_file))
    assert result.exit_code == 0, result.output
    model_run = resolve_as("torchvision-vgg11", runs_root, ModelRun)
    config = model_run.config()
    assert config["source"]["sha256"] and config["net"]["net"] == "A"
    assert model_run.default_test_scales(False) == (256,)
    assert model_run.default_test_scales(True) == (224, 256, 288)
    assert model_run.classes(runs_root) == imagenet_classes()
    from vggcli import load_model

    model = load_model(runs_root / "torchvision-vgg11", root=runs_root)
    assert not model.training and model.classes[1]["name"] == "goldfish"
    assert model.run == "torchvision-vgg11/v001"
    assert vgg("evaluate", "torchvision-vgg11").exit_code == 2  # no dataset of its own
    result = vgg(
        "evaluate", "torchvision-vgg11", "--data", "subset", "--mode", "centre",
        "--precision", "fp32", "--no-flip",
    )
    assert result.exit_code == 0, result.output
    evaluation = resolve_as("torchvision-vgg11-eval", runs_root, EvaluationRun)
    stored = np.load(evaluation.posteriors("centre"))
    # torchvision's model on the same views, its logits restricted to the dataset's classes
    dataset_wnids = sorted(imagenet_classes()[i]["wnid"] for i in SUBSET)
    position = {c["wnid"]: c["index"] for c in imagenet_classes()}
    images = BetonImages(runs_root / "subset" / "v001" / "val.beton")
    views = np.concatenate([centre_view(images[i], 224, 256) for i in range(len(images))])
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float()
    logits = _their_logits(_torchvision("vgg11", seed=5), x)
    expected = torch.softmax(logits[:, [position[w] for w in dataset_wnids]], dim=1).numpy()
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert stored.shape == (6, 3)
    # dense evaluations of imported runs fuse like any other (a second import of the file)
    assert vgg("import-weights", str(vgg11_file), "--name", "twin").exit_code == 0
    for run in ("torchvision-vgg11", "twin"):
        result = vgg("evaluate", run, "--data", "subset", "--precision", "fp32")
        assert result.exit_code == 0, result.output
    result = vgg("fuse", "torchvision-vgg11", "twin", "--mode", "crop")  # nothing to fuse
    assert result.exit_code == 2 and "evaluate it on the members' dataset first" in result.output
    result = vgg("fuse", "torchvision-vgg11-eval", "twin-eval", "--no-multi-scale")
    assert result.exit_code == 0, result.output
    fused = np.load(resolve("fuse-torchvision-vgg11+twin", runs_root).output("dense.npy"))
    dense = np.load(resolve_as("twin-eval", runs_root, EvaluationRun).posteriors("dense"))
    np.testing.assert_allclose(fused, dense, atol=1e-6)  # the same weights twice


def test_imported_weights_start_fine_tunes_and_deeper_nets_on_the_datasets_classes(
    vgg, runs_root, imagenet_subset, vgg11_file
) -> None:
    from vggcli.config import Recipe, TrainConfig
    from vggcli.stages.finetune import starting_config
    from vggcli.stages.train import _model

    shutil.copytree(imagenet_subset, runs_root)
    assert vgg("import-weights", str(vgg11_file), "--name", "A").exit_code == 0
    imported = resolve_as("A", runs_root, ModelRun)
    dataset = resolve_as("subset", runs_root, DatasetRun)
    theirs = _torchvision("vgg11", seed=5).state_dict()
    rows = [imagenet_classes().index(c) for c in imagenet_classes() if c["wnid"] in
            {w["wnid"] for w in dataset.classes()}]
    # a fine-tune: every weight kept, fc8 cut to the dataset's classes, normalisation kept
    config = starting_config(imported, "subset", runs_root)
    config = TrainConfig(config.net, 256, 256, dataset=dataset.label, finetune_from=imported.label)
    model, parents = _model(config, runs_root, dataset)
    torch.testing.assert_close(model.head.fc8.weight, theirs["classifier.6.weight"][rows])
    torch.testing.assert_close(model.features[0].weight, theirs["features.0.weight"])
    torch.testing.assert_close(model.std, torch.tensor(IMAGENET_STD) * 255)
    # a deeper net from the imported A: A's layers and A's normalisation
    config = TrainConfig(
        NetSpec(net="B", num_classes=3), 256, 256, Recipe(), dataset="subset/v001",
        init_from=imported.label,
    )
    deeper, _ = _model(config, runs_root, dataset)
    torch.testing.assert_close(deeper.convs()[2].weight, theirs["features.3.weight"])
    torch.testing.assert_close(deeper.head.fc8.bias, theirs["classifier.6.bias"][rows])
    torch.testing.assert_close(deeper.mean, torch.tensor(IMAGENET_MEAN) * 255)
    with pytest.raises(VggError, match="--data"):
        starting_config(imported, None, runs_root)
    # the command itself: one step of 4 images at S = 224, on the dataset's 3 classes
    args = ["--scale", "224", "--data", "subset", "--batch-size", "4", "--epochs", "1"]
    result = vgg("finetune-scale", "A", *args, "--name", "A-tuned")
    assert result.exit_code == 0, result.output
    tuned = resolve_as("A-tuned", runs_root, ModelRun)
    recipe = tuned.config()["recipe"]
    assert recipe["batch_size"] == 4 and recipe["lr"] == pytest.approx(1e-3)  # paper's / 10
    assert [p["run"] for p in tuned.manifest()["parents"]] == ["A", "subset"]
    assert tuned.classes(runs_root) == dataset.classes()


def test_import_refuses_what_it_cannot_read(vgg, tmp_path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    for args in ([str(junk)], [str(tmp_path / "missing.pth")]):
        result = vgg("import-weights", *args)
        assert result.exit_code == 2 and "error:" in result.output
        assert "Traceback" not in result.output
    bn = tmp_path / "vgg11_bn.pth"
    torch.save(torchvision.models.vgg11_bn().state_dict(), bn)
    result = vgg("import-weights", str(bn))
    assert result.exit_code == 2 and "batch-normalised" in result.output
