"""`just gpu-check`: the whole real path of `vgg` on this machine's GPU, measured in one run.

ImageNet-sized images are generated and preprocessed, then: the train-step benchmark (D, bf16
+ channels_last, eager and compiled, beside the bf16 GEMM peak), real training of D through
the FFCV loader with each decode path (img/s, input stall, CPU cores used), the path
`--decode auto` picks and its pilot's figures, the loader benchmark, torchrun with one
process against the plain run (weights identical; two processes too when there are two
GPUs), a multi-scale dense+crop evaluation, and an ONNX export run by onnxruntime against
torch. Each step is a real `vgg` command in its own process.

Writes gpu-check.json and gpu-check.md in --out, and exits 1 naming the steps that failed.
`--device cpu` runs the same steps at toy sizes (the test suite does, from the wheelhouse).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How big each step is: a few minutes on one H100/H200, seconds on a CPU."""

    classes: int
    train_per_class: int
    val_per_class: int
    max_side: int  # of the stored images (683 keeps S = 512 for 4:3 images)
    bench_args: tuple[str, ...]  # vgg bench train
    net: tuple[str, ...]  # the trained net: config, width, crop, scale
    batch: int
    steps: int
    loader_args: tuple[str, ...]  # vgg bench loader
    decodes: tuple[str, str]  # the host's decode, then the other path


GPU = Sizes(
    classes=10, train_per_class=200, val_per_class=10, max_side=683,
    bench_args=("--batch", "256", "--precision", "bf16", "--compile", "--repeats", "10"),
    net=("--net", "D", "--crop", "224", "--scale", "256-512"),
    batch=128, steps=150,
    loader_args=("--images", "1000", "--pass-images", "3000", "--repeats", "2"),
    decodes=("ffcv", "gpu"),
)
CPU = Sizes(
    classes=2, train_per_class=10, val_per_class=3, max_side=128,
    bench_args=("--batch", "1", "--precision", "fp32", "--repeats", "1"),
    net=("--net", "A", "--width", "0.0625", "--crop", "32", "--scale", "40-64"),
    batch=4, steps=4,
    loader_args=("--images", "12", "--pass-images", "24", "--repeats", "1", "--crop", "32",
                 "--scale", "40-64", "--workers", "1", "--batch", "4"),
    decodes=("ffcv", "torch"),
)


class StepFailed(Exception):
    """A step's command failed or its figures did not hold; the message says which."""


class StepSkipped(Exception):
    """A step this machine cannot run (a package it needs is not installed): said, not failed."""


@dataclass
class Check:
    """The state of one gpu-check run: where it writes, how big, what each step found."""

    out: Path  # absolute: the steps run there
    device: str
    sizes: Sizes
    steps: list[dict[str, Any]]
    machine: str = ""  # what ran it, for the reports

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def vgg(self, name: str, *args: str, launcher: tuple[str, ...] = ()) -> dict[str, float]:
        """Run one `vgg` command (its output in logs/NAME.log); its wall time and the CPU
        cores it kept busy on average (user + system time of it and its children / wall)."""
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [*(launcher or (sys.executable, "-m")), "vggcli", *args]
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        with open(log, "w") as fh:  # run in --out: `-m vggcli` must not find a checkout's
            done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, cwd=self.out,
                                  env={**os.environ, "VGG_RUNS": str(self.runs)}, check=False)
        wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            raise StepFailed(f"`vgg {' '.join(args[:2])}` exited {done.returncode}: "
                             f"{lines[-1] if lines else 'no output'} (see {log})")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"seconds": wall, "cpu_cores_busy": cpu / wall}


# -- the steps ---------------------------------------------------------------------------
def make_data(check: Check) -> dict[str, Any]:
    s = check.sizes
    check.vgg("make-data", "make-demo-data", str(check.out / "images"), "--imagenet-sized",
              "--classes", str(s.classes), "--train-per-class", str(s.train_per_class),
              "--val-per-class", str(s.val_per_class))
    timed = check.vgg("preprocess", "preprocess", str(check.out / "images"), "--name", "data",
                      "--max-side", str(s.max_side))
    images = s.classes * (s.train_per_class + s.val_per_class)
    return {"images": images, "preprocess_img_s": images / timed["seconds"]}


def bench_train(check: Check) -> dict[str, Any]:
    check.vgg("bench-train", "bench", "train", "--device", check.device, *check.sizes.bench_args)
    result = _latest_json(check, "bench-train", "results.json")
    row = result["rows"][-1]
    figures = {"gemm_bf16_tflop_s": result["gemm_bf16_tflop_s"], "precision": row["precision"],
               "batch": row["batch"], "img_s": row["ours_img_s"],
               "vs_torchvision": row["ratio"], "share_of_gemm_peak": row["ours_share_of_gemm_peak"]}
    if "ours_compiled_img_s" in row:
        figures |= {"compiled_img_s": row["ours_compiled_img_s"],
                    "compiled_share_of_gemm_peak": row["ours_compiled_share_of_gemm_peak"]}
    return figures


def _train_args(check: Check, name: str, decode: str, steps: int) -> tuple[str, ...]:
    s = check.sizes
    return ("train", *s.net, "--data", "data", "--name", name, "--decode", decode,
            "--device", check.device, "--batch-size", str(s.batch), "--epochs", "1000",
            "--max-steps", str(steps))


def train_with(decode: str) -> Callable[[Check], dict[str, Any]]:
    """Real training through the loader with one decode path: img/s and the input stall
    over the steps after the first tenth (compilation, cuDNN's autotuning, the first
    epoch's worker start), and the host cores the training process kept busy."""

    def train(check: Check) -> dict[str, Any]:
        name = f"train-{decode}"
        timed = check.vgg(name, *_train_args(check, name, decode, check.sizes.steps))
        rows = [json.loads(line) for line in _latest(check, name, "metrics.jsonl").splitlines()]
        steps = [r for r in rows if r["kind"] == "step"]
        steady = steps[max(1, len(steps) // 10):] or steps
        seconds = sum(r["step_s"] for r in steady)
        return {"steps": len(steps), "img_s": sum(r["img_per_s"] * r["step_s"] for r in steady)
                / seconds, "input_stall": sum(r["input_wait_s"] for r in steady) / seconds,
                "cpu_cores_busy": timed["cpu_cores_busy"]}

    return train


def decode_auto(check: Check) -> dict[str, Any]:
    """What `--decode auto` (the default) picks here, and the pilot's figures behind it on
    CUDA: two steps of training, eager, so no compile is timed."""
    from vggcli.runs import resolve

    args = _train_args(check, "decode-auto", "auto", 2)
    check.vgg("decode-auto", *args, "--no-compile")
    manifest = resolve("decode-auto", check.runs).manifest()
    pilot = manifest["results"].get("decode_pilot", {})
    return {"decode": manifest["config"].get("decode", "ffcv"), **pilot}


def bench_loader(check: Check) -> dict[str, Any]:
    check.vgg("bench-loader", "bench", "loader", "--data", "data", *check.sizes.loader_args)
    result = _latest_json(check, "bench-loader", "results.json")
    return {key: value for key, value in result.items()
            if key.endswith("_img_s") and key.startswith(("ours", "decode", "torchvision"))}


def torchrun_equality(check: Check) -> dict[str, Any]:
    """The same short training as a plain process and under torchrun (one process; two with
    NCCL where there are two GPUs). The weights must match as the test suite's distributed
    tests require: each tensor within a relative L2 difference of 1e-5 (two ranks sum their
    gradients in another order; cuDNN's backward kernels need not be deterministic), and
    the figures say whether they were identical."""
    steps = min(check.sizes.steps, 10)
    check.vgg("plain", *_train_args(check, "plain", "ffcv", steps))
    worlds = [1] + ([2] if check.device != "cpu" and len(_gpus()) >= 2 else [])
    figures: dict[str, Any] = {"steps": steps}
    for world in worlds:
        name = f"torchrun-{world}"
        launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(world), "-m")
        check.vgg(name, *_train_args(check, name, "ffcv", steps), launcher=launcher)
        worst, identical = _weight_difference(check, "plain", name)
        figures |= {f"nproc_{world}_identical": identical, f"nproc_{world}_max_rel_l2": worst}
        if worst > 1e-5:
            raise StepFailed(f"torchrun --nproc-per-node {world}: weights differ from the plain "
                             f"run's by a relative L2 of {worst:.2g} (more than 1e-5)")
    return figures


def evaluate(check: Check) -> dict[str, Any]:
    timed = check.vgg("evaluate", "evaluate", f"train-{check.sizes.decodes[0]}", "--name",
                      "evaluation", "--multi-scale", "--mode", "dense+crop",
                      "--device", check.device)
    images = check.sizes.classes * check.sizes.val_per_class
    return {"images": images, "img_s": images / timed["seconds"]}


def export_onnx(check: Check) -> dict[str, Any]:
    """The crop classifier exported to ONNX and run by onnxruntime (its CUDA provider where
    it has one) against torch on the same batch of 0-255 images."""
    import numpy as np
    import torch

    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (what `vgg export` needs beside onnx)
    except ImportError as exc:
        raise StepSkipped(f"{exc.name} is not installed (the export extra: vgg[export])") from None

    from vggcli.artifacts import ModelRun
    from vggcli.checkpoints import load_model
    from vggcli.export import CropClassifier
    from vggcli.runs import resolve

    check.vgg("export", "export", f"train-{check.sizes.decodes[0]}", "--name", "export")
    model, _ = load_model(ModelRun(resolve(f"train-{check.sizes.decodes[0]}", check.runs)))
    crop = model.spec.crop
    images = np.random.default_rng(0).uniform(0, 255, (4, 3, crop, crop)).astype(np.float32)
    with torch.no_grad():
        expected = CropClassifier(model.eval())(torch.from_numpy(images)).numpy()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in onnxruntime.get_available_providers()]
    session = onnxruntime.InferenceSession(
        str(resolve("export", check.runs).path / "crop.onnx"), providers=providers)
    (got,) = session.run(None, {"image": images})
    difference = float(np.abs(got - expected).max())
    provider = session.get_providers()[0]
    allowed = 1e-4 if provider == "CPUExecutionProvider" else 1e-3  # the GPU's TF32 convs
    if difference > allowed:
        raise StepFailed(f"onnxruntime's posteriors ({provider}) differ from torch's by "
                         f"{difference:.2g} (more than {allowed:g})")
    return {"provider": provider, "max_abs_difference": difference}


Step = tuple[str, Callable[[Check], dict[str, Any]], tuple[str, ...]]  # name, run, needs


def steps(sizes: Sizes) -> list[Step]:
    host, other = sizes.decodes
    return [
        ("data", make_data, ()),
        ("bench train", bench_train, ()),
        (f"train {host}", train_with(host), ("data",)),
        (f"train {other}", train_with(other), ("data",)),
        ("decode auto", decode_auto, ("data",)),
        ("bench loader", bench_loader, ("data",)),
        ("torchrun equality", torchrun_equality, ("data",)),
        ("evaluate", evaluate, (f"train {host}",)),
        ("export onnx", export_onnx, (f"train {host}",)),
    ]


# -- running and reporting ---------------------------------------------------------------
def run_steps(check: Check, plan: list[Step]) -> list[str]:
    """Every step whose needs passed, in order; each one's figures or error recorded. The
    names of the failed (or skipped) steps are returned."""
    failed: list[str] = []
    for name, step, needs in plan:
        missing = [need for need in needs if need in failed]
        start = time.monotonic()
        if missing:
            record = {"result": "failed", "error": f"not run: needs {', '.join(missing)}"}
        else:
            try:
                record = {"result": "ok", **step(check)}
            except StepSkipped as exc:
                record = {"result": "skipped", "error": str(exc)}
            except StepFailed as exc:
                record = {"result": "failed", "error": str(exc)}
            except Exception as exc:  # a bug in this script or a library: keep going
                where = traceback.format_exc(limit=-1).strip().splitlines()[-1]
                record = {"result": "failed", "error": f"{type(exc).__name__}: {where}"}
        record = {"step": name, **record, "step_seconds": time.monotonic() - start}
        check.steps.append(record)
        failed += [name] if record["result"] == "failed" else []
        print(f"gpu-check: {name}: {record['result']} {record.get('error', '')}", flush=True)
        write_reports(check)
    return failed


def write_reports(check: Check) -> None:
    machine = check.machine
    document = {"device": check.device, "machine": machine, "sizes": asdict(check.sizes),
                "steps": check.steps}
    (check.out / "gpu-check.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [f"# vgg gpu-check on {machine}", "", "| step | result | seconds | figures |",
             "|---|---|---|---|"]
    for record in check.steps:
        figures = ", ".join(f"{k} {_number(v)}" for k, v in record.items()
                            if k not in ("step", "result", "error", "step_seconds"))
        result = {"ok": "ok", "skipped": "skipped", "failed": "**failed**"}[record["result"]]
        result += f": {record['error']}" if "error" in record else ""
        lines.append(f"| {record['step']} | {result} | {record['step_seconds']:.0f} | {figures} |")
    (check.out / "gpu-check.md").write_text("\n".join(lines) + "\n")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _machine(device: str) -> str:
    from importlib.metadata import version

    cores = f"{len(os.sched_getaffinity(0))} CPU cores, torch {version('torch')}"
    gpus = _gpus()
    return f"{len(gpus)} x {gpus[0]}, {cores}" if device != "cpu" and gpus else f"CPU, {cores}"


def _gpus() -> list[str]:
    """The GPUs' names, from nvidia-smi: this process never opens a CUDA context itself,
    which on GPUs in exclusive-process mode would lock every step out."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def _latest(check: Check, run: str, file: str) -> str:
    from vggcli.runs import resolve

    return (resolve(run, check.runs).path / file).read_text()


def _latest_json(check: Check, run: str, file: str) -> Any:
    return json.loads(_latest(check, run, file))


def _weight_difference(check: Check, a: str, b: str) -> tuple[float, bool]:
    """The largest relative L2 difference of a tensor between two runs' weights, and
    whether every tensor is identical."""
    import torch

    from vggcli.artifacts import ModelRun
    from vggcli.checkpoints import load_model
    from vggcli.runs import resolve

    first, second = (load_model(ModelRun(resolve(r, check.runs)))[0].state_dict() for r in (a, b))
    worst = max(float((first[k] - second[k]).float().norm() / first[k].float().norm().clamp(
        min=1e-12)) for k in first)
    return worst, all(torch.equal(first[k], second[k]) for k in first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write (default gpu-check/<device>-<UTC time>); must be new")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = args.out or Path("gpu-check") / f"{args.device.replace(':', '')}-{stamp}"
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty; name a new --out", file=sys.stderr)
        return 2
    if args.device != "cpu" and not _gpus():
        print("error: nvidia-smi lists no GPU here; give --device cpu for the CPU check",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out.resolve(), args.device, CPU if args.device == "cpu" else GPU, [],
                  _machine(args.device))
    failed = run_steps(check, steps(check.sizes))
    print(f"gpu-check: {out / 'gpu-check.md'}")
    if failed:
        print(f"gpu-check: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
