"""Table 1 and Table 2: exact layers, exact parameter counts, shapes, init-from-A."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vggcli.errors import VggError
from vggcli.models import (
    CONFIGS,
    VGG,
    NetSpec,
    a_conv_positions,
    count_parameters,
    identity_init,
    init_from_a,
    initialise,
)

# Table 2 in millions, and the exact totals computed layer by layer (weights + biases).
TABLE_2 = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
EXACT = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "B-5x5": 134_503_528,  # not in Table 2: see the B-5x5 test
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}
WEIGHT_LAYERS = {"A": 11, "A-LRN": 11, "B": 13, "B-5x5": 8, "C": 16, "D": 16, "E": 19}


def _layer_list_count(net: str, classes: int = 1000) -> int:
    """Independent count from Table 1's text: k*k*c_in*c_out + c_out per layer."""
    total, channels = 0, 3
    for item in CONFIGS[net]:
        if item in ("M", "LRN"):
            continue
        if isinstance(item, str):  # "C1-256", "C5-64"
            k, out = (int(n) for n in item[1:].split("-"))
        else:
            k, out = 3, item
        total += k * k * channels * out + out
        channels = out
    for fan_in, fan_out in ((7 * 7 * 512, 4096), (4096, 4096), (4096, classes)):
        total += fan_in * fan_out + fan_out
    return total


def _receptive_fields(model: VGG) -> list[int]:
    """Input pixels seen by one cell after each max-pool, from the layers' kernels and
    strides."""
    field, step, fields = 1, 1, []
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            field += (layer.kernel_size[0] - 1) * step
        elif isinstance(layer, nn.MaxPool2d):
            field += (layer.kernel_size - 1) * step
            step *= layer.stride
            fields.append(field)
    return fields


@pytest.mark.parametrize("net", list(CONFIGS))
def test_parameter_count_matches_table_2(net: str) -> None:
    with torch.device("meta"):
        model = VGG(NetSpec(net))
    assert count_parameters(model) == EXACT[net] == _layer_list_count(net)
    if net in TABLE_2:
        assert round(count_parameters(model) / 1e6) == TABLE_2[net]
    assert len(list(model.weight_layers())) == WEIGHT_LAYERS[net]


def test_b_5x5_is_b_with_each_pair_of_3x3_convs_one_5x5_conv() -> None:
    """Sect. 4.1's shallow B: conv5-64 P conv5-128 P conv5-256 P conv5-512 P conv5-512 P
    (stride 1, padding 2), then B's head; the same receptive fields as B."""
    stages = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 512)]  # (c_in, c_out)
    convs = sum(25 * c_in * c_out + c_out for c_in, c_out in stages)
    assert convs == 4_864 + 204_928 + 819_456 + 3_277_312 + 6_554_112 == 10_860_672
    fc = 25_088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert EXACT["B-5x5"] == convs + fc == 134_503_528
    # B's pair in each stage (3x3 c_in -> c, 3x3 c -> c) gives way to one 5x5 c_in -> c
    pairs = sum(9 * c_in * c + c + 9 * c * c + c for c_in, c in stages)
    assert EXACT["B-5x5"] == EXACT["B"] - pairs + convs
    with torch.device("meta"):
        model, b = VGG(NetSpec("B-5x5")), VGG(NetSpec("B"))
    assert count_parameters(model) == EXACT["B-5x5"]
    assert [(c.in_channels, c.out_channels) for c in model.convs()] == stages
    assert {(c.kernel_size, c.stride, c.padding) for c in model.convs()} == {
        ((5, 5), (1, 1), (2, 2))
    }
    assert sum(isinstance(m, nn.ReLU) for m in model.features) == 5
    assert _receptive_fields(model) == _receptive_fields(b) == [6, 16, 36, 76, 156]


def test_d_matches_torchvision_vgg16_count() -> None:
    from torchvision.models import vgg16

    with torch.device("meta"):
        assert count_parameters(VGG(NetSpec("D"))) == count_parameters(vgg16())


@pytest.mark.parametrize("net", list(CONFIGS))
def test_stage_shapes_at_224(net: str) -> None:
    model = VGG(NetSpec(net, num_classes=7, width=1 / 16))
    x = torch.zeros(2, 3, 224, 224)
    sizes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
            sizes.append((x.shape[1], x.shape[2]))
    assert sizes == [(4, 112), (8, 56), (16, 28), (32, 14), (32, 7)]
    assert model.head.conv_weights()[0].shape == (256, 32, 7, 7)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 7)
    assert model.score_map(torch.zeros(1, 3, 256, 320)).shape == (1, 7, 2, 4)


def test_c_has_1x1_convs_last_in_stages_3_to_5_and_lrn_only_in_a_lrn() -> None:
    convs = VGG(NetSpec("C")).convs()
    assert [c.kernel_size[0] for c in convs] == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]
    lrn = [m for m in VGG(NetSpec("A-LRN")).features if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 1 and lrn[0].size == 5 and lrn[0].k == 2.0 and lrn[0].beta == 0.75
    assert lrn[0].alpha / lrn[0].size == pytest.approx(1e-4)  # AlexNet's alpha, un-divided
    assert not any(
        isinstance(m, nn.LocalResponseNorm)
        for n in "ABCDE"
        for m in VGG(NetSpec(n, width=1 / 16)).features
    )


def test_lrn_equals_krizhevsky_formula_and_pytorchs_module() -> None:
    """b_c = a_c / (k + alpha * sum over the 5 channels around c of a^2)^beta, by hand."""
    from vggcli.models import LocalResponseNorm

    torch.manual_seed(0)
    x = (torch.rand(2, 7, 5, 4) * 60).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours = LocalResponseNorm()(x)
    padded = torch.nn.functional.pad(x.detach() ** 2, (0, 0, 0, 0, 2, 2))
    sums = torch.stack([padded[:, c : c + 5].sum(1) for c in range(7)], 1)
    torch.testing.assert_close(ours.detach(), x.detach() / (2 + 1e-4 * sums) ** 0.75)
    reference = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    torch.testing.assert_close(ours, reference(x))
    (grad,) = torch.autograd.grad(ours.sum(), x)
    (expected,) = torch.autograd.grad(reference(x).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_dropout_only_on_fc6_and_fc7_and_relu_not_after_fc8() -> None:
    model = VGG(NetSpec("A", num_classes=5, width=1 / 16, crop=32, dropout=0.5))
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert (logits < 0).any()  # no ReLU on the class scores
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))  # dropout active in training


def test_small_nets_follow_width_and_crop() -> None:
    model = VGG(NetSpec("D", num_classes=10, width=0.25, crop=64))
    assert model.convs()[0].out_channels == 16 and model.head.fc6.out_features == 1024
    assert model.head.conv_weights()[0].shape[-2:] == (2, 2)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_the_model_owns_its_normalisation_and_saves_it() -> None:
    """0-255 RGB in: the model subtracts its mean and divides by its std (1 / input_scale),
    and both travel in its state dict."""
    torch.manual_seed(0)
    spec = NetSpec("A", num_classes=5, width=1 / 16, crop=32, dropout=0, input_scale=1 / 64)
    model = VGG(spec).eval()
    mean = [120.0, 110.0, 100.0]
    model.set_normalisation(mean)
    bare = VGG(NetSpec("A", num_classes=5, width=1 / 16, crop=32, dropout=0)).eval()
    bare.load_state_dict({**model.state_dict(), "mean": torch.zeros(3), "std": torch.ones(3)})
    x = torch.randint(0, 256, (2, 3, 32, 32)).float()
    expected = bare((x - torch.tensor(mean).view(1, 3, 1, 1)) / 64)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model.score_map(x).mean(dim=(2, 3)), expected)
    state = model.state_dict()
    assert state["mean"].tolist() == mean and state["std"].tolist() == [64.0] * 3
    assert count_parameters(model) == count_parameters(bare)  # buffers, not parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"net": "F"}, "unknown net"),
        ({"crop": 100}, "multiple of 32"),
        ({"width": 0}, "width"),
        ({"input_scale": 0}, "input scale must be positive"),
    ],
)
def test_bad_specs_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(VggError, match=message):
        NetSpec(**kwargs)


@pytest.mark.parametrize("net", ["B", "C", "D", "E"])
def test_init_from_a_copies_exactly_the_first_four_convs_and_the_fcs(net: str) -> None:
    a_spec = NetSpec("A", num_classes=10, width=1 / 16, crop=32)
    a = VGG(a_spec)
    initialise(a, "normal", std=0.5)
    deep = VGG(NetSpec(net, num_classes=10, width=1 / 16, crop=32))
    initialise(deep, "normal", std=0.01)
    before = {n: p.clone() for n, p in deep.named_parameters()}
    copied = set(init_from_a(deep, a.state_dict(), a_spec))
    assert len(copied) == 2 * (4 + 3)
    a_layers = [*a.convs()[:4], *a.fcs()]
    deep_layers = [*(deep.convs()[i] for i in (0, 2, 4, 5)), *deep.fcs()]
    for src, dst in zip(a_layers, deep_layers, strict=True):
        assert torch.equal(src.weight, dst.weight) and torch.equal(src.bias, dst.bias)
    for name, param in deep.named_parameters():
        if name not in copied:
            assert torch.equal(param, before[name]), name  # the rest stays random


@pytest.mark.parametrize("net", ["B", "D", "E"])
def test_identity_init_makes_the_inserted_square_convs_pass_their_input_through(net) -> None:
    """With the square convs not copied from A as identities, the deeper net computes
    exactly A's features up to A's third pool (where the copied convs end); the copied and
    the non-square layers are left as they were."""
    a_spec = NetSpec("A", num_classes=10, width=1 / 16, crop=32)
    a = VGG(a_spec)
    initialise(a, "kaiming")
    deep = VGG(NetSpec(net, num_classes=10, width=1 / 16, crop=32))
    initialise(deep, "kaiming")
    copied = init_from_a(deep, a.state_dict(), a_spec)
    before = {n: p.clone() for n, p in deep.named_parameters()}
    identity_init(deep, copied)
    x = torch.rand(2, 3, 32, 32) * 4
    a_pools = [i for i, m in enumerate(a.features) if isinstance(m, nn.MaxPool2d)]
    deep_pools = [i for i, m in enumerate(deep.features) if isinstance(m, nn.MaxPool2d)]
    with torch.no_grad():
        ours = deep.features[: deep_pools[2] + 1](x)
        torch.testing.assert_close(ours, a.features[: a_pools[2] + 1](x), rtol=0, atol=1e-6)
    names = {id(p): n for n, p in deep.named_parameters()}
    for conv in deep.convs():
        name = names[id(conv.weight)]
        square = conv.in_channels == conv.out_channels
        changed = not torch.equal(conv.weight, before[name])
        assert changed == (square and name not in copied), name


@pytest.mark.parametrize("net", ["B", "C", "D", "E"])
def test_net2deeper_starts_a_deeper_net_as_exactly_a(net: str) -> None:
    """All eight of A's convs in their places and the convs A lacks as identities: the deeper
    net's logits are A's (the paper's four-conv copy leaves conv4/5 random under A's copied
    FC layers, so a deeper net starts at chance: docs/train.md)."""
    a_spec = NetSpec("A", num_classes=10, width=1 / 16, crop=32)
    a = VGG(a_spec)
    initialise(a, "kaiming")
    deep = VGG(NetSpec(net, num_classes=10, width=1 / 16, crop=32))
    initialise(deep, "kaiming")
    copied = init_from_a(deep, a.state_dict(), a_spec, convs=8)
    assert len(copied) == 2 * (8 + 3)
    identity_init(deep, copied)
    x = torch.rand(3, 3, 64, 48) * 4
    a.eval(), deep.eval()  # no dropout
    with torch.no_grad():
        torch.testing.assert_close(deep(x), a(x), rtol=1e-5, atol=1e-5)
        first_four = VGG(deep.spec).eval()
        initialise(first_four, "kaiming")
        identity_init(first_four, init_from_a(first_four, a.state_dict(), a_spec))
        assert not torch.allclose(first_four(x), a(x), atol=1e-3)


def test_a_conv_positions_follow_the_blocks_of_table_1() -> None:
    assert a_conv_positions("A") == list(range(8))
    assert a_conv_positions("B") == [0, 2, 4, 5, 6, 7, 8, 9]
    assert a_conv_positions("C") == a_conv_positions("D") == [0, 2, 4, 5, 7, 8, 10, 11]
    assert a_conv_positions("E") == [0, 2, 4, 5, 8, 9, 12, 13]
    assert a_conv_positions("B-5x5") == []


def test_init_from_a_refuses_a_mismatched_run() -> None:
    a_spec = NetSpec("A", num_classes=10, width=1 / 16, crop=32)
    deep = VGG(NetSpec("D", num_classes=10, width=1 / 8, crop=32))
    with pytest.raises(VggError, match="need net A with width 0.125"):
        init_from_a(deep, VGG(a_spec).state_dict(), a_spec)
    with pytest.raises(VggError, match="need net A"):
        b_spec = NetSpec("B", 10, 1 / 8, 32)
        init_from_a(deep, VGG(b_spec).state_dict(), b_spec)
    shallow = VGG(NetSpec("B-5x5", num_classes=10, width=1 / 16, crop=32))
    with pytest.raises(VggError, match="B-5x5 cannot start from net A's layers"):
        init_from_a(shallow, VGG(a_spec).state_dict(), a_spec)


@pytest.mark.parametrize("net", ["A", "C", "B-5x5"])
def test_fc_as_conv_gives_the_same_logits_on_a_crop(net: str) -> None:
    """The dense path (fc6 as a 7x7 conv, fc7/fc8 as 1x1) equals the FC path at 224."""
    torch.manual_seed(0)
    model = VGG(NetSpec(net, num_classes=10, width=1 / 16)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        dense = model.score_map(x)
        assert dense.shape == (2, 10, 1, 1)
        torch.testing.assert_close(dense.flatten(1), model(x), rtol=1e-5, atol=1e-6)
        bigger = torch.randn(1, 3, 288, 320)
        assert model.score_map(bigger).shape == (1, 10, 3, 4)
        torch.testing.assert_close(model(bigger), model.score_map(bigger).mean(dim=(2, 3)))


def test_classifier_equals_fc6_as_7x7_conv_and_fc7_fc8_as_1x1_convs() -> None:
    """The FC-to-conv conversion is exact: convolving with the reshaped FC weights gives
    the same score map as the classifier run over a larger feature map."""
    torch.manual_seed(0)
    head = VGG(NetSpec("D", num_classes=10, width=1 / 16)).head.eval()
    features = torch.randn(2, 32, 9, 12)
    w6, w7, w8 = head.conv_weights()
    x = torch.relu(F.conv2d(features, w6, head.fc6.bias))
    x = torch.relu(F.conv2d(x, w7, head.fc7.bias))
    expected = F.conv2d(x, w8, head.fc8.bias)
    with torch.no_grad():
        got = head.score_map(features)
    assert got.shape == (2, 10, 3, 6)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
