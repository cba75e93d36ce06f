"""What a training run is, as data: the nets (Table 1's configurations), the paper's recipe
and the training config a run records in its manifest and resumes with; and the closed sets
of values other commands' options take (storage modes, export formats, demo styles).

Torch-free and FFCV-free, so that commands, pipelines and reports can build, check and read
configs without loading either; the loop (train.py), the models (models.py) and the loaders
(data/) take these types.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from vggcli.device import Precision, available_cores, omp_threads
from vggcli.errors import VggError

# conv3 output channels, "M" = 2x2/2 max-pool, "Ck-n" = k x k conv with n outputs ("C1-512":
# config C's 1x1 convs; "C5-64": the shallow B of Sect. 4.1, each pair of B's 3x3 convs one 5x5),
# "LRN" = local response normalisation (A-LRN only).
# fmt: off
CONFIGS: dict[str, list[int | str]] = {
    "A":     [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B":     [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B-5x5": ["C5-64", "M", "C5-128", "M", "C5-256", "M", "C5-512", "M", "C5-512", "M"],
    "C":     [64, 64, "M", 128, 128, "M", 256, 256, "C1-256", "M",
              512, 512, "C1-512", "M", 512, 512, "C1-512", "M"],
    "D":     [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
    "E":     [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# fmt: on

SCHEME = 3  # the augmentation scheme new runs use (see data/loader.py's docstring)
# where training images are decoded: FFCV's compiled workers (libjpeg-turbo, OpenCV resize),
# torchvision on the CPU, or nvJPEG on the CUDA device (the last two: data/torch_loader.py)
DECODES = ("ffcv", "torch", "gpu")
# or chosen when the run starts: the GPU's when the host decodes too slowly for it
# (decode_choice.py); a run records the path chosen, never "auto"
AUTO_DECODE = "auto"
INSERTED_INITS = ("random", "identity", "net2deeper")
INITS = ("normal", "glorot", "kaiming")
TORCHVISION_ARCHITECTURES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
# the other commands' choices, here so that the CLI checks them before importing torch or FFCV
WRITE_MODES = ("jpg", "raw", "proportion", "smart")  # FFCV's RGBImageField storage
EXPORT_FORMATS = ("onnx", "torchscript")
DEMO_STYLES = ("scenes", "shapes", "photos")
VAL_LAYOUTS = ("folders", "loc", "devkit")  # how a demo dataset lays out val/


def check_decode(decode: str, device: str | None = None) -> None:
    """One line for a decode path that does not exist, or (given the training device) cannot
    run there."""
    if decode not in (AUTO_DECODE, *DECODES):
        raise VggError(
            f"unknown decode path '{decode}': choose {AUTO_DECODE}, {', '.join(DECODES)}",
            field="decode",
        )
    if decode == "gpu" and device is not None and not device.startswith("cuda"):
        raise VggError(
            f"gpu decoding needs a CUDA device and this run uses {device}: "
            "decode with torch (the same path on the CPU) or ffcv",
            field="decode",
        )


@dataclass(frozen=True)
class NetSpec:
    """Everything that fixes a network's shape; stored in every checkpoint."""

    net: str = "D"
    num_classes: int = 1000
    width: float = 1.0  # multiplies every conv and FC width (CPU-sized runs)
    crop: int = 224  # training crop; fc6 kernel = crop / 32
    dropout: float = 0.5
    input_scale: float = 1.0  # multiplies the mean-subtracted 0-255 pixels (1 = the paper's)

    def __post_init__(self) -> None:
        if self.net not in CONFIGS:
            raise VggError(f"unknown net '{self.net}': choose one of {', '.join(CONFIGS)}")
        if self.crop % 32 or self.crop < 32:
            raise VggError(f"crop size {self.crop} is not a positive multiple of 32")
        if not 0 < self.width <= 1 or self.num_classes < 2:
            raise VggError("width must be in (0, 1] and there must be at least 2 classes")
        if not self.input_scale > 0:
            raise VggError(f"input scale must be positive, not {self.input_scale}")

    def channels(self, n: int) -> int:
        return max(1, round(n * self.width))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """The paper's optimisation recipe; every number overridable."""

    epochs: int = 74
    batch_size: int = 256
    micro_batch: int = 0  # images per forward pass; 0 = the whole batch
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    plateau_patience: int = 2  # epochs without a better val accuracy before lr /= 10
    max_lr_drops: int = 3
    init: str = "normal"
    init_std: float = 1e-2
    last_std: float | None = None
    colour_sigma: float = 0.1
    seed: int = 0
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    flip: bool = True  # random horizontal flips (the paper's); off for mirror-sensitive classes
    # how a deeper net started from A starts its other convs: "random" (the paper's: `init`),
    # "identity" for the square ones (see models.identity_init), or "net2deeper": all of A's
    # convs copied, the ones A lacks as identities, so the net starts as A's function
    inserted_init: str = "random"
    # the last `final_drop` epochs at a tenth of the lr: a plateau scheduled in advance, for
    # budgets too short for the plateau rule to fire (0: the paper's rule alone)
    final_drop: int = 0
    # end training at a validation plateau after the last lr drop (the paper's stop); `epochs`
    # is then a cap
    plateau_stop: bool = False

    def __post_init__(self) -> None:
        if self.plateau_patience < 1:
            raise VggError("the plateau patience is at least one epoch")
        if self.micro_batch > self.batch_size:
            raise VggError(
                f"{self.micro_batch} images per pass are more than the batch of "
                f"{self.batch_size}", field="micro_batch")
        if not 0 <= self.final_drop < max(self.epochs, 1):
            raise VggError(
                f"the final lr drop must leave at least one epoch at the full lr: "
                f"{self.final_drop} of {self.epochs} epochs",
                field="final_drop",
            )
        if self.inserted_init not in INSERTED_INITS:
            raise VggError(
                f"unknown init '{self.inserted_init}' for the layers not copied from A: "
                f"choose {' or '.join(INSERTED_INITS)}",
                field="inserted_init",
            )

    def accumulation(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on each of `world_size` processes, which share
        the batch equally (so N processes make the same update as one)."""
        if self.batch_size % world_size:
            raise VggError(
                f"a batch of {self.batch_size} images does not split evenly over "
                f"{world_size} processes",
                field="batch_size",
            )
        share = self.batch_size // world_size
        micro = min(self.micro_batch or share, share)  # more ranks may need no accumulation
        if share % micro:
            what = "the batch size" if world_size == 1 else "each process's share of"
            raise VggError(
                f"{micro} images per pass must divide {what} {share}", field="micro_batch"
            )
        return share // micro

    def micro(self, world_size: int = 1) -> int:
        """Images per forward pass on each process."""
        return self.batch_size // world_size // self.accumulation(world_size)


@dataclass(frozen=True)
class TrainConfig:
    net: NetSpec
    s_min: int
    s_max: int
    recipe: Recipe = field(default_factory=Recipe)
    precision: Precision = "bf16"
    compile: bool = False
    dataset: str = ""  # label of the dataset run version
    init_from: str | None = None  # label of the A run version (deeper nets)
    finetune_from: str | None = None  # label of the run version whose weights we start from
    augmentation: int = SCHEME  # per-image random draws: see data/loader.py
    fc_only: bool = False  # train fc6-fc8 alone, convs frozen (the ILSVRC-submission D)
    # who decodes the training images (DECODES above): torch and gpu resize a
    # little differently from ffcv, so a run records its choice and resumes with it
    decode: str = "ffcv"

    def __post_init__(self) -> None:
        check_decode(self.decode)
        if self.fc_only and self.finetune_from is None:
            raise VggError("training only the FC layers needs trained convs: fine-tune a run")
        if not self.net.crop <= self.s_min <= self.s_max:
            raise VggError(
                f"training scale S={self.s_min}-{self.s_max} must be at least the crop "
                f"size {self.net.crop}"
            )
        if self.precision not in ("bf16", "fp32"):
            raise VggError(f"precision must be bf16 or fp32, not '{self.precision}'")

    @property
    def val_scale(self) -> int:
        """Validation crop at Q = S, or the middle of the jitter range (Sect. 4.1)."""
        return (self.s_min + self.s_max) // 2

    @property
    def stage(self) -> str:
        """How the paper names a model: config/training scale, e.g. D/S=256-512."""
        s = f"{self.s_min}" if self.s_min == self.s_max else f"{self.s_min}-{self.s_max}"
        return f"{self.net.net}/S={s}"

    def as_manifest(self) -> dict[str, Any]:
        """The config a resume must match. Scheme 1 is written as no `augmentation` key at
        all, exactly as the runs that use it recorded their config."""
        data = asdict(self)
        if self.augmentation == 1:
            del data["augmentation"]
        if self.recipe.flip:  # as every run before the switch recorded it: resumable
            del data["recipe"]["flip"]
        for name in ("inserted_init", "final_drop", "plateau_stop"):  # recorded when not default
            if data["recipe"][name] == Recipe.__dataclass_fields__[name].default:
                del data["recipe"][name]
        if not self.fc_only:  # recorded only when on: every other run's config is unchanged
            del data["fc_only"]
        if self.decode == "ffcv":  # likewise: recorded only when not the default
            del data["decode"]
        return data

    @staticmethod
    def from_manifest(data: dict[str, Any]) -> TrainConfig:
        fields = {
            "augmentation": 1,
            **data,
            "net": NetSpec(**data["net"]),
            "recipe": Recipe(**data["recipe"]),
        }
        return TrainConfig(**fields)


@dataclass(frozen=True)
class Runtime:
    """Options that change speed or safety but never the result; not part of the config."""

    workers: int | None = None  # training loader workers; None: default_workers(device)
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int = 0  # also checkpoint every N steps (0 = only by time and epoch)
    device: str = "auto"


def default_workers(device: str = "cpu") -> int:
    """Training loader workers when --workers is not given: the node's cores shared among
    its ranks. On a CPU, OMP_NUM_THREADS instead when set: FFCV's loader sets torch's
    threads to its worker count, so more workers would oversubscribe the cores the user gave
    this process. On CUDA the GPU does the arithmetic, and OMP_NUM_THREADS, which torchrun
    sets to 1 for every rank when it starts several, would leave one decoder per GPU."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, available_cores() // ranks_here)
    return share if device.startswith("cuda") else omp_threads() or share
