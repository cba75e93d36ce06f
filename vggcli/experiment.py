"""Training runs as the user names them: which dataset, which parent, which run to write.

`vgg train --net D` writes run `D` from the only dataset run; `vgg finetune-scale runs/D`
writes the next version of `D` with the previous one as its parent, so `runs/D` always names
the most advanced stage of net D.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from vggcli import checkpoints
from vggcli.errors import VggError
from vggcli.models import NetSpec
from vggcli.progress import console
from vggcli.runs import RunVersion, RunWriter, list_runs, resolve, versions
from vggcli.train import Recipe, Runtime, TrainConfig, build_model, pick_device, train


def find_dataset(root: Path, data: str | None) -> RunVersion:
    """--data if given, else the one dataset run under the runs root."""
    if data is not None:
        version = resolve(data, root)
        if "train.beton" not in version.manifest().get("outputs", {}):
            raise VggError(
                f"{version.label} is not a dataset run (no train.beton); "
                "make one with `vgg preprocess`"
            )
        return version
    found = []
    for run_dir in list_runs(root):
        complete = [v for v in versions(run_dir) if v.status() == "complete"]
        if complete and "train.beton" in complete[-1].manifest().get("outputs", {}):
            found.append(complete[-1])
    if not found:
        raise VggError(f"no complete dataset run under {root}: run `vgg preprocess DIR` first")
    if len(found) > 1:
        names = ", ".join(str(v.path.parent) for v in found)
        raise VggError(f"several dataset runs ({names}): pick one with --data")
    return found[0]


def parse_scale(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '256-512' -> scale jitter S in [256, 512]."""
    try:
        parts = [int(p) for p in text.split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] > parts[-1] or parts[0] <= 0:
        raise VggError(f"--scale must be S (e.g. 256) or Smin-Smax (e.g. 256-512), not '{text}'")
    return parts[0], parts[-1]


def precision_for(device: str, requested: str) -> str:
    """'auto' means bf16 where the hardware does it natively (AVX512-BF16/AMX, CUDA)."""
    if requested != "auto":
        return requested
    import torch

    if pick_device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def _device_label(device: str) -> str:
    import torch

    chosen = pick_device(device)
    if chosen.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(chosen)})"
    return f"cpu ({len(os.sched_getaffinity(0))} cores)"


def execute(config: TrainConfig, root: Path, name: str, runtime: Runtime) -> RunVersion:
    """Run (or resume) a training config; its dataset and parents are named inside it."""
    dataset = resolve(config.dataset, root)
    parents, a_run, start = [dataset], None, None
    if config.init_from is not None:
        a_version = resolve(config.init_from, root)
        a_run = checkpoints.load(checkpoints.model_file(a_version))
        parents.append(a_version)
    if config.finetune_from is not None:
        parent = resolve(config.finetune_from, root)
        start = checkpoints.load(checkpoints.model_file(parent))
        parents.insert(0, parent)
    model = build_model(config, start, a_run)
    with RunWriter.open(
        root,
        name,
        config=config.as_manifest(),
        parents=parents,
        device=_device_label(runtime.device),
    ) as run:
        resumed = " (resuming)" if run.resumed else ""
        console.print(f"run directory: [bold]{run.path}[/]{resumed}")
        results = train(config, run, model, dataset, runtime, {"stage": config.stage})
    if results["val_top1_err"] is not None:
        console.print(
            f"val top-1 error {results['val_top1_err']:.2%}, top-5 "
            f"{results['val_top5_err']:.2%} at Q={config.val_scale}"
        )
    return run.version


def train_new(
    net: NetSpec,
    scale: str,
    recipe: Recipe,
    precision: str,
    compile_model: bool,
    root: Path,
    name: str | None,
    data: str | None,
    init_from: str | None,
    runtime: Runtime,
) -> RunVersion:
    """`vgg train`: a net from scratch (or from A's layers), run named after the net."""
    dataset = find_dataset(root, data)
    net = replace(net, num_classes=int(dataset.results()["num_classes"]))
    s_min, s_max = parse_scale(scale)
    a_label = resolve(init_from, root).label if init_from is not None else None
    config = TrainConfig(
        net,
        s_min,
        s_max,
        recipe,
        precision_for(runtime.device, precision),
        compile_model,
        dataset.label,
        a_label,
    )
    return execute(config, root, name or net.net, runtime)


def finetune(
    source: str,
    scale: str,
    lr: float,
    epochs: int | None,
    root: Path,
    name: str | None,
    runtime: Runtime,
    precision: str,
) -> RunVersion:
    """`vgg finetune-scale`: all layers from a trained run, at a new scale (Sect. 3.1)."""
    parent = resolve(source, root)
    checkpoints.model_file(parent)
    previous = TrainConfig.from_manifest(parent.manifest()["config"])
    recipe = replace(previous.recipe, lr=lr, epochs=epochs or previous.recipe.epochs, max_steps=0)
    s_min, s_max = parse_scale(scale)
    config = replace(
        previous,
        s_min=s_min,
        s_max=s_max,
        recipe=recipe,
        init_from=None,
        finetune_from=parent.label,
        precision=precision_for(runtime.device, precision),
    )
    return execute(config, root, name or parent.name, runtime)


def resume(ref: str, root: Path, runtime: Runtime) -> RunVersion:
    """`vgg train --resume runs/D/v003`: finish an interrupted version with its own config."""
    path = Path(ref) if Path(ref).exists() else root / ref
    found = [v for v in versions(path.parent) if v.path == path]
    if not found:
        raise VggError(f"--resume needs a run version such as runs/D/v001, not {ref}")
    version = found[0]
    status = version.status()
    if status == "complete":
        raise VggError(
            f"{version.label} is complete; nothing to resume "
            "(run the command without --resume to train a new version)"
        )
    if status == "running":
        raise VggError(f"{version.label} is being written by another process")
    if versions(path.parent)[-1] != version:
        raise VggError(f"{version.label} is not the latest version of {version.name}")
    config = TrainConfig.from_manifest(version.manifest()["config"])
    return execute(config, root, version.name, runtime)
