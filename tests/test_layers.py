"""The layering is a test, not a promise (docs/design.md draws it).

commands -> stages -> {runs, artifacts, checkpoints, device} and the core; the core never
sees a run directory; run directories never need torch.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vggcli"
CORE = (
    "vggcli.config",
    "vggcli.train",
    "vggcli.evaluate",
    "vggcli.descriptors",
    "vggcli.eval_settings",
    "vggcli.export",
    "vggcli.fuse",
    "vggcli.models",
    "vggcli.metrics",
    "vggcli.bench",
    "vggcli.loader_bench",
    "vggcli.preprocess_bench",
    "vggcli.report",
    "vggcli.claims",
    "vggcli.classes",
    "vggcli.torchvision_weights",
    "vggcli.data",
)
RUN_LAYER = ("vggcli.runs", "vggcli.artifacts", "vggcli.checkpoints", "vggcli.stages")
HEAVY = ("torch", "torchvision", "ffcv", "numba", "cv2")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


PARSE = """
import ast, json, sys
found = {}
for path in sys.argv[1:]:
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {node.module + "." + alias.name for alias in node.names}
    found[path] = sorted(names)
print(json.dumps(found))
"""


@functools.cache
def _all_imports() -> dict[str, set[str]]:
    """Every module each file imports anywhere (inside functions too), as dotted names;
    `from vggcli.stages import train` counts as vggcli.stages.train. Parsed in a fresh
    interpreter: in a long test session CPython 3.11.7's ast.parse once failed with "AST
    constructor recursion depth mismatch", a CPython bug fixed in later 3.11 releases."""
    paths = [str(p) for p in sorted(PACKAGE.rglob("*.py"))]
    out = subprocess.run(
        [sys.executable, "-c", PARSE, *paths], capture_output=True, text=True, check=True
    )
    return {path: set(names) for path, names in json.loads(out.stdout).items()}


def _imports(path: Path) -> set[str]:
    return _all_imports()[str(path)]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = _modules()


def _imports_of(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    return {m: _imports(p) for m, p in MODULES.items() if _within(m, prefixes)}


def test_the_layers_exist() -> None:
    for name in (*CORE, *RUN_LAYER, "vggcli.commands", "vggcli.device"):
        assert name in MODULES, name


def test_commands_import_only_stages_and_cli_helpers() -> None:
    allowed = ("vggcli.stages", "vggcli.pipeline", "vggcli.commands", "vggcli.errors",
               "vggcli.progress", "vggcli.config")
    for module, imports in _imports_of(("vggcli.commands",)).items():
        ours = {i for i in imports if _within(i, ("vggcli",))}
        assert all(_within(i, allowed) for i in ours), (module, ours)


def test_the_core_never_sees_a_run_directory() -> None:
    for module, imports in _imports_of(CORE).items():
        wrong = {i for i in imports if _within(i, (*RUN_LAYER, "vggcli.commands", "typer"))}
        assert not wrong, (module, wrong)


def test_only_stages_open_runs() -> None:
    """RunWriter appears in runs.py (its home), checkpoints.py (files inside a run being
    written) and the stages; nowhere else."""
    for module, path in MODULES.items():
        if "RunWriter" in path.read_text():
            assert _within(module, ("vggcli.runs", "vggcli.checkpoints", "vggcli.stages")), module


def test_every_stage_opens_its_run_through_lead_run() -> None:
    """One way to open a run (stages/common.lead_run: rank 0 alone, announced, its path
    known to every rank after): no stage calls RunWriter.open itself, and every stage that
    writes a run (all but the queries and the listings) goes through lead_run."""
    writers = set()
    for module, path in MODULES.items():
        if not _within(module, ("vggcli.stages",)) or module == "vggcli.stages.common":
            continue
        text = path.read_text()
        assert "RunWriter.open" not in text, module
        if "lead_run(" in text:
            writers.add(module.rsplit(".", 1)[1])
    assert writers == {
        "preprocess", "adopt", "train", "evaluate", "fuse", "export", "import_weights", "bench",
        "report",
    }


@pytest.mark.parametrize(
    "module", ["vggcli.runs", "vggcli.artifacts", "vggcli.eval_settings", "vggcli.config"]
)
def test_run_layer_and_configs_import_nothing_heavy(module: str) -> None:
    """Statically (no heavy import written) and at run time (none pulled in transitively):
    runs, their records and the configs they hold are read without torch or FFCV."""
    heavy = {i for i in _imports(MODULES[module]) if _within(i, HEAVY)}
    assert not heavy, heavy
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_torch_loader_shares_sampling_not_the_ffcv_loader() -> None:
    """Both loaders draw their order and keys from data/sampling.py; the torch loader never
    imports the FFCV one (which reaches it only through `make_loader`'s dispatch)."""
    assert "vggcli.data.sampling" in _imports(MODULES["vggcli.data.torch_loader"])
    assert not any(
        _within(i, ("vggcli.data.loader",)) for i in _imports(MODULES["vggcli.data.torch_loader"])
    )
    assert not any(_within(i, ("ffcv",)) for i in _imports(MODULES["vggcli.data.sampling"]))


def test_nothing_below_commands_imports_typer() -> None:
    for module, path in MODULES.items():
        if not _within(module, ("vggcli.commands", "vggcli.cli")):
            assert "typer" not in {i.split(".")[0] for i in _imports(path)}, module


def test_fuse_help_imports_no_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vggcli", "fuse", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "ffcv" not in imported
    assert "Average the softmax posteriors" in out.stdout


def test_only_the_entry_point_imports_the_cli() -> None:
    """No import circle through the CLI: the pipeline runners start steps by module name
    (`python -m vggcli`, the zygote's runpy), never by importing the app that started them."""
    for module, imports in _imports_of(("vggcli",)).items():
        if module not in ("vggcli.cli", "vggcli.__main__") and not module.startswith(
            "vggcli.commands"
        ):
            assert not any(_within(i, ("vggcli.cli", "vggcli.commands")) for i in imports), module


def test_the_pipeline_plan_imports_no_runner_and_nothing_heavy() -> None:
    """plan.py (and resources.py) know the file, the runs and the graph; local.py and
    slurm.py carry a plan out. The plan needs neither torch nor a launcher."""
    runners = ("vggcli.pipeline.local", "vggcli.pipeline.slurm", "vggcli.zygote", "submitit")
    for module in ("vggcli.pipeline.plan", "vggcli.pipeline.resources"):
        imports = _imports(MODULES[module])
        assert not any(_within(i, (*runners, "vggcli.stages", *HEAVY)) for i in imports), module
    code = ("import sys, vggcli.pipeline.plan; print(sorted(m for m in sys.modules if "
            f"m.split('.')[0] in {HEAVY + ('submitit',)!r} or m in {runners!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
