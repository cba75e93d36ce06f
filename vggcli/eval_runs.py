"""Evaluation and fusion as runs: which model, which dataset, where posteriors are stored.

`vgg evaluate runs/D` writes `runs/D-eval/vNNN` holding float16 posteriors per method and
scale (`dense.npy`, `crop-Q384.npy`, ...), the labels, and the dataset version and image
order they belong to, so that `vgg fuse` never recomputes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vggcli import checkpoints
from vggcli.errors import VggError
from vggcli.evaluate import EvalSettings, Evaluator, default_scales, error_table, evaluate_method
from vggcli.fuse import average, check_compatible
from vggcli.progress import console, progress_bar
from vggcli.runs import RunVersion, RunWriter, resolve, versions


def settings_for(
    model_run: RunVersion, mode: str, multi_scale: bool, scales: list[int] | None, precision: str
) -> EvalSettings:
    """The paper's default test scales for this run unless --scales says otherwise."""
    config = model_run.manifest()["config"]
    s_min, s_max = config["s_min"], config["s_max"]
    crop = config["net"]["crop"]
    chosen = tuple(scales) if scales else default_scales(s_min, s_max, multi_scale, crop)
    return EvalSettings(mode, chosen, crop, precision)


def _save(run: RunWriter, name: str, posteriors: np.ndarray) -> None:
    with run.writing(name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, posteriors.astype(np.float16))


def evaluate_run(
    ref: str,
    root: Path,
    mode: str,
    multi_scale: bool,
    scales: list[int] | None,
    precision: str,
    device: str = "cpu",
    name: str | None = None,
) -> RunVersion:
    """Evaluate a trained run; write and return the evaluation run."""
    import torch

    from vggcli.data.beton import BetonImages

    model_run = resolve(ref, root)
    model, payload = checkpoints.load_model(model_run)
    settings = settings_for(model_run, mode, multi_scale, scales, precision)
    dataset = resolve(model_run.manifest()["config"]["dataset"], root)
    images = BetonImages(dataset.output("val.beton"))
    config = {
        "model": model_run.label,
        "mode": mode,
        "scales": list(settings.scales),
        "crop": settings.crop,
        "precision": precision,
    }
    evaluator = Evaluator(model, payload["mean_rgb"], settings, torch.device(device))
    with RunWriter.open(
        root,
        name or f"{model_run.name}-eval",
        config=config,
        parents=[model_run, dataset],
        device=device,
    ) as run:
        console.print(f"run directory: [bold]{run.path}[/]")
        per_method, per_scale = {}, {}
        with progress_bar() as bar:
            for method in settings.methods():
                for q in settings.scales:
                    task = bar.add_task(f"{method} Q={q}", total=len(images))
                    per_scale[(method, q)] = evaluate_method(
                        evaluator, images, method, q, lambda n, t=task: bar.advance(t, n)
                    )
                    _save(run, f"{method}-Q{q}.npy", per_scale[(method, q)])
                per_method[method] = average([per_scale[(method, q)] for q in settings.scales])
                _save(run, f"{method}.npy", per_method[method])
        if mode == "dense+crop":
            per_method["dense+crop"] = average([per_method["dense"], per_method["crop"]])
            _save(run, "dense+crop.npy", per_method["dense+crop"])
        with run.writing("labels.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, images.labels)
        rows = _rows(settings, images.labels, per_scale, per_method)
        run.set_result("errors", rows)
        for key, value in _provenance(model_run, dataset, images).items():
            run.set_result(key, value)
    print_table(f"{model_run.label} ({payload.get('stage', '')})", rows)
    return run.version


def _rows(
    settings: EvalSettings,
    labels: np.ndarray,
    per_scale: dict[tuple[str, int], np.ndarray],
    per_method: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """Error rows: each method at each scale (when there are several), then combined."""
    named = {}
    if len(settings.scales) > 1:
        named = {(method, (q,)): probs for (method, q), probs in per_scale.items()}
    named |= {(method, tuple(settings.scales)): probs for method, probs in per_method.items()}
    rows = []
    for (method, scales), probs in named.items():
        (row,) = error_table({method: probs}, labels)
        rows.append({**row, "method": method, "scales": list(scales)})
    return rows


def _provenance(model_run: RunVersion, dataset: RunVersion, images: Any) -> dict[str, Any]:
    """What fusion checks: same dataset version, same image order, same classes."""
    return {
        "model": model_run.label,
        "dataset": dataset.label,
        "val_index_sha256": dataset.manifest()["outputs"]["val.csv"]["sha256"],
        "num_images": len(images),
        "num_classes": int(dataset.results()["num_classes"]),
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(
        "method", "test scale Q", "top-1 val error (%)", "top-5 val error (%)", title=title
    )
    for row in rows:
        name = row.get("method", row.get("name"))
        scales = ",".join(str(q) for q in row.get("scales", []))
        table.add_row(name, scales, f"{100 * row['top1_err']:.1f}", f"{100 * row['top5_err']:.1f}")
    console.print(table)


def find_posteriors(
    model_run: RunVersion, root: Path, mode: str, scales: tuple[int, ...]
) -> RunVersion | None:
    """The newest complete evaluation of exactly this model version with this mode's file."""
    for version in reversed(versions(root / f"{model_run.name}-eval")):
        if version.status() != "complete":
            continue
        config = version.manifest()["config"]
        if (
            config["model"] == model_run.label
            and tuple(config["scales"]) == scales
            and f"{mode}.npy" in version.manifest()["outputs"]
        ):
            return version
    return None


def fuse_runs(
    refs: list[str], root: Path, mode: str, multi_scale: bool, precision: str, name: str | None
) -> RunVersion:
    """Table 6: each member's posteriors (evaluated now if missing), then their average."""
    if mode not in ("dense", "crop", "dense+crop"):
        raise VggError(f"unknown fusion mode '{mode}': choose dense, crop or dense+crop")
    if len(refs) < 2:
        raise VggError("give at least two runs to fuse")
    evaluations, names = [], []
    for ref in refs:
        model_run = resolve(ref, root)
        names.append(model_run.name.removesuffix("-eval"))
        outputs = model_run.manifest().get("outputs", {})
        if "labels.npy" in outputs:  # an evaluation run: use it as it is
            if f"{mode}.npy" not in outputs:
                raise VggError(
                    f"{model_run.label} has no '{mode}' posteriors (evaluated with "
                    f"--mode {model_run.manifest()['config']['mode']})"
                )
            evaluations.append(model_run)
            continue
        if checkpoints.MODEL_FILE not in outputs:
            raise VggError(
                f"{model_run.label} is not a trained model run; it cannot provide "
                f"'{mode}' posteriors"
            )
        scales = settings_for(model_run, mode, multi_scale, None, precision).scales
        found = find_posteriors(model_run, root, mode, scales)
        if found is None:
            console.print(f"no {mode} posteriors for {model_run.label}: evaluating it first")
            found = evaluate_run(str(model_run.path), root, mode, multi_scale, None, precision)
        evaluations.append(found)
    members = [v.results() for v in evaluations]
    check_compatible(members)
    labels = np.load(evaluations[0].output("labels.npy"))
    posteriors = {
        m["model"]: np.load(v.output(f"{mode}.npy"))
        for m, v in zip(members, evaluations, strict=True)
    }
    fused = average(list(posteriors.values()))
    rows = error_table({**posteriors, "fusion": fused}, labels)
    run_name = name or "fuse-" + "+".join(names)
    config = {"members": [m["model"] for m in members], "mode": mode, "multi_scale": multi_scale}
    with RunWriter.open(
        root, run_name, config=config, parents=evaluations, device=f"cpu ({os.cpu_count()} cores)"
    ) as run:
        console.print(f"run directory: [bold]{run.path}[/]")
        _save(run, f"{mode}.npy", fused)
        run.set_result("errors", rows)
    print_table(f"fusion ({mode})", [{**r, "method": r["name"]} for r in rows])
    return run.version
