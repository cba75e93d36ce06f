"""One builder of the nets of Table 1 (config.CONFIGS: the paper's table as data), and init-from-A.

The model owns its input normalisation: it takes 0-255 RGB and subtracts its `mean` buffer
(the training set's mean RGB, the paper's only preprocessing) and divides by its `std`
buffer (1 for the paper's nets; 1 / input_scale for CPU-sized runs), both saved with the
weights. The classifier is fully convolutional (fc6 as a k x k conv with k = crop/32, fc7 and fc8 as
1x1 convs), so the same weights serve 224 training crops (a 1x1 score map) and dense
evaluation of whole images (a larger map, averaged spatially).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from vggcli.config import CONFIGS, INITS, NetSpec
from vggcli.errors import VggError

FC_WIDTH = 4096
# How many of A's convs a deeper net copies: the paper's "first four convolutional layers"
# (A's conv1..conv4 are 3-64, 64-128, 128-256, 256-256), or all of them (net2deeper)
PAPER_A_CONVS = 4
A_CONVS = sum(isinstance(item, int) for item in CONFIGS["A"])  # eight


def conv_blocks(net: str) -> list[list[int | str]]:
    """The convs of each pooling block of `net`, as CONFIGS writes them (A: [64], [128],
    [256, 256], [512, 512], [512, 512]; an int is a 3x3 conv of that width)."""
    blocks: list[list[int | str]] = [[]]
    for item in CONFIGS[net]:
        if item == "M":
            blocks.append([])
        elif item != "LRN":
            blocks[-1].append(item)
    return blocks[:-1]


def a_conv_positions(net: str) -> list[int]:
    """Where each of A's eight convs sits in `net`: A's convs of a block are the deeper net's
    first ones of the same block (same kernel, same widths), so the convs a deeper net adds
    are the later ones of each block, all square (as many outputs as inputs). A net whose
    blocks do not start with A's convs has none: B-5x5, whose 5x5 convs match no 3x3 conv
    of A, and which with 8 weight layers is shallower than A, so it starts from random
    init, as A does."""
    positions, start = [], 0
    for ours, theirs in zip(conv_blocks(net), conv_blocks("A"), strict=True):
        if ours[: len(theirs)] != theirs:
            return []
        positions += range(start, start + len(theirs))
        start += len(ours)
    return positions


class LocalResponseNorm(nn.LocalResponseNorm):
    """Krizhevsky et al.'s LRN: k=2, n=5, alpha=1e-4, beta=0.75, with alpha applied to the
    plain sum of squares. PyTorch divides alpha by n, so we pass alpha * n."""

    def __init__(self) -> None:
        super().__init__(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function as PyTorch's, 3-4x faster on CPU: the sum of squares over the
        n neighbouring channels is a 1x1 convolution with a banded 0/1 matrix (a GEMM), not
        PyTorch's padded 3-d average pool."""
        channels = x.shape[1]
        index = torch.arange(channels, device=x.device)
        band = ((index[:, None] - index[None, :]).abs() <= self.size // 2).to(x.dtype)
        squares = F.conv2d(x * x, band.view(channels, channels, 1, 1))
        return x * (self.k + (self.alpha / self.size) * squares).pow(-self.beta)


class Head(nn.Module):
    """fc6, fc7, fc8 with ReLU and dropout after fc6 and fc7, applied at every position.

    The weights are stored as fully-connected layers (torchvision's layout). Applied to every
    k x k window of a feature map (k = crop/32, 7 for 224) they are exactly fc6 as a k x k
    convolution and fc7, fc8 as 1x1 convolutions (see `conv_weights`), which is how dense
    evaluation runs the classifier over a whole image. We compute it as matrix products over
    the unfolded windows: the same numbers, and much faster than a 7x7 convolution with
    4096 outputs on CPUs. A training crop has exactly one window.
    """

    def __init__(self, spec: NetSpec, in_channels: int) -> None:
        super().__init__()
        fc, self.kernel = spec.channels(FC_WIDTH), spec.crop // 32
        self.fc6 = nn.Linear(in_channels * self.kernel**2, fc)
        self.fc7 = nn.Linear(fc, fc)
        self.fc8 = nn.Linear(fc, spec.num_classes)
        self.dropout = nn.Dropout(spec.dropout)

    def conv_weights(self) -> list[torch.Tensor]:
        """fc6..fc8 as convolution kernels (views of the FC weights)."""
        k = self.kernel
        fc6 = self.fc6.weight.view(self.fc6.out_features, -1, k, k)
        return [fc6, self.fc7.weight[:, :, None, None], self.fc8.weight[:, :, None, None]]

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """Class score map (N, classes, H-k+1, W-k+1) of a feature map of any size >= k."""
        return self._as_map(self._classify(self._windows(x)), x)

    def fc7_map(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations after their ReLU (N, fc, H-k+1, W-k+1) at every window: the
        descriptor of Appendix B before pooling. Dropout is off in eval mode."""
        return self._as_map(self._fc7(self._windows(x)), x)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """Every k x k window of x as a row (N * windows, C*k*k), in (C, kh, kw) order."""
        windows = F.unfold(x, self.kernel)  # (N, C*k*k, windows)
        return windows.transpose(1, 2).reshape(-1, windows.shape[1])

    def _as_map(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-window rows of `_windows(x)` back as a (N, channels, H-k+1, W-k+1) map. (Two
        helpers, not one taking a function: TorchScript, which scripts this module for
        `vgg export`, has no callable arguments.)"""
        n, _, height, width = x.shape
        return z.view(n, height - self.kernel + 1, width - self.kernel + 1, -1).permute(0, 3, 1, 2)

    def conv_score_map(self, x: torch.Tensor) -> torch.Tensor:
        """`score_map` as fc6 a k x k convolution and fc7, fc8 1x1 ones (eval mode: no
        dropout): the same numbers, slower here on CPUs, but the textbook fully convolutional
        graph (Conv, Relu) that exported models carry and other runtimes optimise, where
        unfold exports as a tangle of Shape, Gather and Range nodes."""
        fc6, fc7, fc8 = self.conv_weights()
        z = torch.relu(F.conv2d(x, fc6, self.fc6.bias))
        z = torch.relu(F.conv2d(z, fc7, self.fc7.bias))
        return F.conv2d(z, fc8, self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores averaged over the score map; a training crop has a single window."""
        if x.shape[-2:] == (self.kernel, self.kernel):
            return self._classify(x.contiguous().flatten(1))
        return self.score_map(x).mean(dim=(2, 3))

    def _classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc8(self._fc7(z))

    def _fc7(self, z: torch.Tensor) -> torch.Tensor:
        z = self.dropout(torch.relu(self.fc6(z)))
        return self.dropout(torch.relu(self.fc7(z)))


def _features(spec: NetSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in CONFIGS[spec.net]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif item == "LRN":
            layers.append(LocalResponseNorm())  # after conv1's ReLU, as in AlexNet
        elif isinstance(item, str):  # "C5-64": 5x5 conv, 64 outputs, "same" padding
            kernel, width = (int(n) for n in item[1:].split("-"))
            out = spec.channels(width)
            conv = nn.Conv2d(channels, out, kernel, padding=kernel // 2)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = out
        else:
            out = spec.channels(item)
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=True)]
            channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Input normalisation, features (Table 1's conv stack), then head (fully convolutional
    classifier). Takes 0-255 RGB; `mean` and `std` start at 0 and 1 / input_scale until
    `set_normalisation` gives the training set's mean."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.full((3,), 1.0 / spec.input_scale))
        self.features = _features(spec)
        last = [m for m in self.features if isinstance(m, nn.Conv2d)][-1]
        self.head = Head(spec, last.out_channels)

    def set_normalisation(self, mean_rgb: list[float], std_rgb: list[float] | None = None) -> None:
        """Per-channel mean (and std, default 1 / input_scale) of the 0-255 RGB input."""
        self.mean.copy_(torch.tensor(mean_rgb, dtype=torch.float32))
        if std_rgb is not None:
            self.std.copy_(torch.tensor(std_rgb, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, spatially averaged: for a crop-sized input exactly the FC classifier."""
        return self.head(self.features(self.normalised(x)))

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.score_map(self.features(self.normalised(x)))

    def fc7_map(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations at every window of the image (dense, like `score_map`)."""
        return self.head.fc7_map(self.features(self.normalised(x)))

    def pool5_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv block's output after its max-pool: what fc6 reads."""
        return self.features(self.normalised(x))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def fcs(self) -> list[nn.Linear]:
        return [self.head.fc6, self.head.fc7, self.head.fc8]

    def weight_layers(self) -> Iterator[nn.Conv2d | nn.Linear]:
        yield from self.convs()
        yield from self.fcs()


Values = Sequence[float] | torch.Tensor


def with_normalisation(
    state: dict[str, torch.Tensor], mean: Values, std: Values
) -> dict[str, torch.Tensor]:
    """A state dict written before the model held `mean` and `std`, completed with them (in
    memory: the file it came from keeps its recorded hash)."""
    if "mean" in state:
        return state
    completed = {"mean": torch.as_tensor(mean), "std": torch.as_tensor(std), **state}
    return {k: v.float() if k in ("mean", "std") else v for k, v in completed.items()}


def keep_classes(
    state: dict[str, torch.Tensor], spec: NetSpec, indices: Sequence[int]
) -> tuple[dict[str, torch.Tensor], NetSpec]:
    """The weights of the same net with only fc8's outputs at `indices`, in that order: the
    logits of a subset of its classes, as a smaller net (state dict and spec) of its own."""
    keep = torch.as_tensor(list(indices), dtype=torch.long)
    kept = {**state}
    for name in ("head.fc8.weight", "head.fc8.bias"):
        kept[name] = state[name].index_select(0, keep).clone()
    return kept, replace(spec, num_classes=len(keep))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def initialise(model: VGG, scheme: str, std: float = 0.01, last_std: float | None = None) -> None:
    """Weights from N(0, std^2) ('normal', the paper's) or Glorot/Xavier uniform ('glorot', the
    paper's alternative) or He/Kaiming normal ('kaiming'); biases zero. `last_std` overrides
    fc8's init, keeping the first softmax soft."""
    for layer in model.weight_layers():
        if scheme == "normal":
            nn.init.normal_(layer.weight, 0.0, std)
        elif scheme == "glorot":
            nn.init.xavier_uniform_(layer.weight)
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        else:
            raise VggError(f"unknown init '{scheme}': choose {', '.join(INITS)}")
        nn.init.zeros_(layer.bias)
    if last_std is not None:
        nn.init.normal_(model.head.fc8.weight, 0.0, last_std)


def check_takes_a_layers(net: str) -> None:
    """Refuse init-from-A for a net none of whose convs has the shape of one of A's."""
    if not a_conv_positions(net):
        raise VggError(
            f"net {net} cannot start from net A's layers: its convs match none of A's, so it "
            "starts from random init like A (drop --init-from; --init picks the scheme)"
        )


def init_from_a(
    model: VGG, a_state: dict[str, torch.Tensor], a_spec: NetSpec, convs: int = PAPER_A_CONVS
) -> list[str]:
    """Copy A's first `convs` conv layers (the paper's four, or all eight) and its three FC
    layers into `model`, each to its place (`a_conv_positions`); return the names of the
    parameters copied."""
    check_takes_a_layers(model.spec.net)
    if (
        a_spec.net not in ("A", "A-LRN")
        or a_spec.width != model.spec.width
        or a_spec.crop != model.spec.crop
        or a_spec.num_classes != model.spec.num_classes
    ):
        raise VggError(
            f"the net to initialise from is {a_spec.net} (width {a_spec.width}, crop "
            f"{a_spec.crop}, {a_spec.num_classes} classes); need net A with width "
            f"{model.spec.width}, crop {model.spec.crop}, {model.spec.num_classes} classes"
        )
    source = VGG(a_spec)
    source.load_state_dict(a_state)
    places = a_conv_positions(model.spec.net)[:convs]
    pairs = [(source.convs()[i], model.convs()[j]) for i, j in enumerate(places)]
    pairs += list(zip(source.fcs(), model.fcs(), strict=True))
    names = {id(p): n for n, p in model.named_parameters()}
    copied = []
    with torch.no_grad():
        for src, dst in pairs:
            for s, d in ((src.weight, dst.weight), (src.bias, dst.bias)):
                d.copy_(s)
                copied.append(names[id(d)])
    return copied


def identity_init(model: VGG, copied: list[str]) -> None:
    """Start each square conv (as many outputs as inputs: C's 1x1 convs too) that was not
    copied from A as the identity (a Dirac kernel, zero bias), so that the deeper net begins
    close to A's function (Chen et al.'s Net2DeeperNet): its input is a ReLU output, which
    ReLU(identity) passes unchanged. The paper starts these layers at random; on small data
    and short budgets the identity lets the layers copied from A keep working while the rest
    learns (docs/train.md)."""
    names = {id(p): n for n, p in model.named_parameters()}
    for conv in model.convs():
        if conv.in_channels == conv.out_channels and names[id(conv.weight)] not in copied:
            with torch.no_grad():
                nn.init.dirac_(conv.weight)
                nn.init.zeros_(conv.bias)
