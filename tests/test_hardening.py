"""Faults inflicted on real files and hostile options: every one must end in a clear
one-line error, the right exit code, an honest version status and nothing that looks
complete. Races are made deterministic with the VGG_PAUSE_AT test hook."""

from __future__ import annotations

import enum
import json
import os
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import typer.main
import typer.testing

from tests.conftest import edit_manifest, vgg_process
from tests.test_train import TINY
from vggcli.cli import app
from vggcli.errors import VggError
from vggcli.runs import COMPLETE, DAMAGED, FAILED, RUNNING, RunWriter, versions

TRAIN = ["train", "--net", "A", "--scale", "40", "--epochs", "1", *TINY]


def _one_line_error(result, exit_code: int, *needles: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == exit_code, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], result.output


# -- every option of every command, given wrong values of its kind ------------------------
def _parameters() -> list[tuple[tuple[str, ...], typing.Any]]:
    """Every parameter (option or argument) of every command, read from the typer app."""
    import typer.main

    from vggcli.cli import app

    found, pending = [], [((), typer.main.get_command(app))]
    while pending:
        path, command = pending.pop()
        for name, sub in getattr(command, "commands", {}).items():
            pending.append(((*path, name), sub))
        found += [(path, param) for param in command.params if param.name != "help"]
    return sorted(found, key=lambda item: item[0])  # each command's in their order


def _kind(param: typing.Any) -> str | None:
    """What a parameter's check says it checks (commands/common.py tags each check), 'flag'
    for a flag, 'choice' for an Enum; None for a parameter nobody checks."""
    if getattr(param, "is_flag", False):
        return "flag"
    annotation = param.type_descriptor.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice"  # click's own Choice
    check = param.callback or param.type_descriptor.parameter_info.parser
    return getattr(check, "kind", None)


LONG = "x" * 5000  # longer than any file name may be (ENAMETOOLONG)
BAD_VALUES = {  # {tmp}: an empty folder, {file}: a file in it
    "choice": ["bogus", "", "../x", "-1", "1e300", "nan"],
    "device": ["bogus", "", "cuda:x", "cuda:-1", "1e300"],
    "scale": ["", "0", "-1", "nan", "1e300", "512-256", "99999", "../x"],
    "scales": ["", "0", "a,b", "nan", "1e300", "99999", "256,,384"],
    "name": ["", "../x", "a/b", ".hidden", "x" * 300],
    "reference": ["", "{tmp}/missing", "{file}", LONG],
    "folder": ["", "{file}", "{file}/x", LONG],
    "existing folder": ["", "{tmp}/missing", "{file}", LONG],
    "existing file": ["", "{tmp}/missing", "{tmp}", LONG],
    "existing path": ["", "{tmp}/missing", LONG],
    "new file": ["", "{tmp}", "{file}/x.npy", LONG],
    "assignment": ["", "abc", "=x", "../x=1", "a b=1", LONG],
}
GOOD_VALUES = {"reference": "tiny", "existing file": "{file}", "existing path": "{file}",
               "existing folder": "{tmp}", "folder": "{tmp}/new"}  # before a later argument
PARAMETERS = _parameters()
COMMAND = typer.main.get_command(app)


def _bad_values(param: typing.Any) -> list[str]:
    """Wrong type, path-shaped, below and above its range (negative, zero, huge), NaN/inf;
    for any other kind, its row of BAD_VALUES."""
    kind = _kind(param)
    if kind != "range":
        return BAD_VALUES[kind]
    low, high, open_low, open_high = param.callback.bounds
    values = ["abc", "", "../x", str(low if open_low else low - 1)]
    values.append(str(high if open_high else high + 1))
    annotation = param.type_descriptor.annotation
    if float in (typing.get_args(annotation) or (annotation,)):
        values += ["nan", "inf", "1e300"]
    return values


def test_every_option_is_checked_before_the_command_runs() -> None:
    """Each parameter has a check of a kind the fuzz below knows, and numbers have both
    ends: with no upper bound, `--lr 1e300` overflowed inside the optimizer (a traceback),
    `--workers 100000` hung and `--train-per-class 10000000000000` began filling the disk."""
    assert len(PARAMETERS) > 150
    for path, param in PARAMETERS:
        kind = _kind(param)
        assert kind == "flag" or kind == "range" or kind in BAD_VALUES, (path, param.opts)
        if kind == "range":
            low, high, _, _ = param.callback.bounds
            assert low is not None and high is not None, (path, param.opts)


def _fuzz_cases(folder: Path, path: tuple[str, ...], param: typing.Any) -> list[list[str]]:
    """The command lines giving `param` each of its wrong values. The value comes first:
    click checks what was given in the order given, so its error comes before any about a
    missing argument; a later argument follows valid ones (the run `tiny`, a file)."""
    (folder / "file").write_text("x")
    where = {"tmp": str(folder), "file": str(folder / "file")}
    if _kind(param) == "flag":
        return [[*path, f"{param.opts[0]}=abc"]]
    if param.param_type_name == "option":
        return [[*path, param.opts[0], value.format(**where)] for value in _bad_values(param)]
    before = [GOOD_VALUES[_kind(p)].format(**where) for p in _arguments(path)]
    before = before[: _arguments(path).index(param)]
    return [[*path, *before, value.format(**where)] for value in _bad_values(param)]


def _arguments(path: tuple[str, ...]) -> list[typing.Any]:
    return [p for where, p in PARAMETERS if where == path and p.param_type_name == "argument"]


@pytest.mark.parametrize(
    ("path", "param"), PARAMETERS, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in PARAMETERS]
)
def test_wrong_values_of_every_option_are_one_line_usage_errors(
    dataset_runs, monkeypatch, tmp_path, path, param
) -> None:
    """Wrong type, negative, zero, huge, NaN/inf, empty and path-shaped values, for every
    parameter of every command (a new option is covered by being there): exit 2, the option
    named, one line, and nothing written."""
    monkeypatch.setenv("VGG_RUNS", str(dataset_runs))
    monkeypatch.setattr(typer.testing, "_get_command", lambda _: COMMAND)  # built once: 30 ms
    before = sorted(p.name for p in dataset_runs.iterdir())
    for args in _fuzz_cases(tmp_path, path, param):
        env = {"COLUMNS": "200", "VGG_NO_VERIFY": None}
        result = typer.testing.CliRunner().invoke(app, args, env=env)
        _one_line_error(result, 2, f"'{param.opts[0]}'")
    assert sorted(p.name for p in dataset_runs.iterdir()) == before


def test_usage_errors_are_found_before_torch_is_imported(tmp_path: Path) -> None:
    """Within a second or so, whatever the command: the checks run as the options are
    parsed, before any command imports torch or FFCV (seconds each). One wrong value of
    each parameter, all in one fresh interpreter."""
    cases = [_fuzz_cases(tmp_path, path, param)[0] for path, param in PARAMETERS]
    script = (
        "import json, sys\n"
        "import typer.testing\n"
        "from vggcli.cli import app\n"
        "command = typer.main.get_command(app)\n"
        "typer.testing._get_command = lambda _: command\n"
        "run = typer.testing.CliRunner().invoke\n"
        "codes = [run(app, args).exit_code for args in json.load(sys.stdin)]\n"
        "heavy = sorted({'torch', 'ffcv', 'numba'} & set(sys.modules))\n"
        "print(json.dumps({'codes': sorted(set(codes)), 'heavy': heavy}))\n"
    )
    env = {**os.environ, "VGG_RUNS": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps(cases), env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.splitlines()[-1]) == {"codes": [2], "heavy": []}, out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", "x", "--scales", "100000"], "'--scales': 100000: each Q"),
        (["evaluate", "x", "--scales", "a,b"], "comma-separated"),
        (["train", "--net", "A", "--scale", "5000"], "above 2048"),
        (["train", "--net", "A", "--bogus"], "No such option: --bogus"),
        (["train", "--net", "Z"], "'--net': choose A, A-LRN, B"),
        (["train", "--net", "A", "--init", "bogus"], "'--init': choose normal, glorot"),
        (["finetune-scale", "x", "--scale", "1-x"], "'--scale': must be S (e.g. 256)"),
        (["preprocess", "x", "--write-mode", "bogus"], "'--write-mode': choose jpg, raw"),
        (["make-demo-data", "x", "--val-layout", "bogus"], "'--val-layout': choose folders"),
        (["verify", "nothing"], "no run 'nothing'"),
        (["evaluate", "tiny", "--multi-scale", "--scales", "40"], "--scales: give --scales or"),
    ],
)
def test_bad_option_text_is_one_line(vgg, train_root, args, needle) -> None:
    _one_line_error(vgg(*args), 2, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["runs", "--runs-root", ""], "--runs-root' (env var: 'VGG_RUNS'): is empty"),
        (["runs", "--runs-root", "{file}"], "--runs-root' (env var: 'VGG_RUNS'): {file} is a file"),
        (["runs", "--runs-root", "{tmp}/missing"], "--runs-root: no runs root"),
        (["report", "--runs-root", "{tmp}/missing"], "--runs-root: no runs root"),
        (["make-demo-data", "{file}"], "'out': {file} is a file, not a folder"),
        (["make-demo-data", ""], "'out': is empty"),
        (["features", "x", "--out", "{file}/x.npy"], "'--out': {file} is a file, not a folder"),
        (["features", "x", "--out", "{tmp}"], "'--out': '{tmp}' is not a file name"),
        (["preprocess", "{tmp}", "--synsets", "{tmp}/none.txt"], "'--synsets': no file"),
        (["preprocess", "{tmp}", "--val-labels", "{tmp}"], "'--val-labels': {tmp} is a folder"),
    ],
)
def test_paths_of_the_wrong_kind_are_usage_errors(vgg, tmp_path: Path, args, needle) -> None:
    """Before: `--runs-root ''` meant the current folder (a preprocess wrote its run into the
    source dataset's folder), a file where a folder belongs was a raw OS error with exit 1,
    a missing --synsets was ignored and `vgg runs` on a missing root said nothing wrong."""
    (tmp_path / "file").write_text("x")
    where = {"file": str(tmp_path / "file"), "tmp": str(tmp_path)}
    result = vgg(*(a.format(**where) for a in args))
    _one_line_error(result, 2, needle.format(**where))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["preprocess", "{source}", "--classes", "99"], "--classes: 99 classes asked for, but"),
        (["preprocess", "{source}", "--name", "x" * 300], "'--name': invalid run name 'xxx"),
    ],
)
def test_silently_accepted_options_are_refused(vgg, tiny_source, runs_root, args, needle):
    """Each was accepted before: 99 classes kept from 4, a 300-character name that failed
    as a raw OS error (and --scales beside --multi-scale, one of them ignored: above)."""
    _one_line_error(vgg(*(a.format(source=tiny_source) for a in args)), 2, needle)
    assert not runs_root.exists() or not any(runs_root.iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", "A", "--mode", "bogus"], "'--mode': choose dense, crop"),
        (["evaluate", "A", "--precision", "fp8"], "'--precision': choose auto, bf16"),
        (["evaluate", "A", "--device", "garbage"], "'--device': choose auto, cpu"),
        (["fuse", "A", "A2", "--mode", "bogus"], "'--mode': choose dense, crop, dense+crop, not"),
    ],
)
def test_bad_evaluation_option_text_is_one_line(vgg, eval_root, args, needle) -> None:
    _one_line_error(vgg(*args), 2, needle)
    assert [v.path.name for v in versions(eval_root / "A-eval")] == ["v001"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--net", "B", "--scale", "40", "--init-from", "tiny"], "--init-from: tiny/v001"),
        (["evaluate", "A", "--data", "A"], "--data: A/v001 is a trained model run, not a dataset"),
        (["finetune-scale", "A", "--scale", "48", "--data", "A"], "--data: A/v001 is a trained"),
    ],
)
def test_a_run_of_the_wrong_kind_is_named_with_its_option(vgg, runs_root, args, needle) -> None:
    shutil.copytree(Path(__file__).parent / "fixtures" / "runs-v0", runs_root)
    _one_line_error(vgg(*args), 2, needle)


# -- degenerate runs ----------------------------------------------------------------------
def test_a_run_that_would_make_no_step_is_refused_before_it_starts(vgg, train_root) -> None:
    result = vgg(*TRAIN, "--batch-size", "1000")
    _one_line_error(result, 2, "--batch-size:", "fewer than one batch of 1000")
    assert not (train_root / "A").exists()


def test_a_diverging_loss_fails_the_version_and_keeps_finite_checkpoints(vgg, train_root):
    import torch

    result = vgg(*TRAIN, "--lr", "10", "--checkpoint-steps", "1")
    assert result.exit_code == 1 and "training diverged" in result.output, result.output
    (version,) = versions(train_root / "A")
    assert version.status() == FAILED and "diverged" in version.manifest()["error"]
    assert not (version.path / "model.pt").exists()
    (checkpoint,) = version.path.glob("checkpoint-*.pt")
    state = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.isfinite(tensor).all() for tensor in state.values())


# -- recorded hashes checked on input ----------------------------------------------------
def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _first_jpeg(beton: Path) -> int:
    from ffcv.reader import Reader

    return int(Reader(str(beton)).metadata[0]["f0"]["data_ptr"])


def test_a_flipped_byte_in_a_beton_jpeg_stops_training(vgg, train_root) -> None:
    beton = train_root / "tiny" / "v001" / "train.beton"
    _flip(beton, _first_jpeg(beton) + 300)
    result = vgg(*TRAIN)
    _one_line_error(result, 1, "tiny/v001: train.beton does not match its recorded sha256")
    assert not (train_root / "A").exists()
    checked = vgg("verify", "tiny")
    assert checked.exit_code == 1 and "1 of 6 files damaged" in checked.output  # manifest included


def test_a_damaged_jpeg_header_is_counted_and_fails_training(vgg, train_root) -> None:
    beton = train_root / "tiny" / "v001" / "train.beton"
    start = _first_jpeg(beton)
    data = bytearray(beton.read_bytes())
    data[start + 2 : start + 40] = bytes(38)  # the JPEG header: libjpeg-turbo refuses it
    beton.write_bytes(bytes(data))
    result = vgg(*TRAIN, "--no-verify")
    assert result.exit_code == 1, result.output
    assert "1 of 200 training images failed to decode" in result.output
    (version,) = versions(train_root / "A")
    assert version.status() == FAILED


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, dataset_runs) -> Path:
    """Two tiny A models and their dense multi-scale evaluations (what fuse reads), made
    once for this module."""
    root = tmp_path_factory.mktemp("evaluated") / "runs"
    shutil.copytree(dataset_runs, root)
    env = {"VGG_RUNS": str(root), "COLUMNS": "200"}
    runner = typer.testing.CliRunner()
    for name, seed in (("A", "0"), ("A2", "1")):
        args = [*TRAIN, "--name", name, "--seed", seed]
        assert runner.invoke(app, args, env=env).exit_code == 0
        assert runner.invoke(app, ["evaluate", name, "--multi-scale"], env=env).exit_code == 0
    return root


@pytest.fixture
def eval_root(evaluated: Path, runs_root: Path) -> Path:
    shutil.copytree(evaluated, runs_root)
    return runs_root


def _damages(path: Path) -> dict[str, typing.Callable[[], None]]:
    data = path.read_bytes()
    middle = len(data) // 2
    # 0x20 (not _flip's 0xFF): a letter changes case, so a flipped manifest stays JSON and
    # only its seal can tell
    flipped = data[:middle] + bytes([data[middle] ^ 0x20]) + data[middle + 1 :]
    return {"flipped": lambda: path.write_bytes(flipped),
            "truncated": lambda: path.write_bytes(data[:middle]),
            "deleted": path.unlink}


def test_every_recorded_file_damaged_any_way_is_named_by_verify(vgg, eval_root) -> None:
    """The corruption test: every file every version recorded (its outputs and its
    manifest), flipped, truncated or deleted, and every manifest field edited: `vgg verify`
    of the version exits 1 naming the file, with no traceback."""
    cases = 0
    for run in ("tiny", "A", "A-eval"):
        version = eval_root / run / "v001"
        written = (version / "manifest.json").read_bytes()
        manifest = json.loads(written)
        for name in [*manifest["outputs"], "manifest.json"]:
            path = version / name
            original = path.read_bytes()
            for how, damage in _damages(path).items():
                damage()
                result = vgg("verify", f"{run}/v001")
                assert "Traceback" not in result.output, (name, how)
                assert result.exit_code == 1, (name, how, result.output)
                named = "manifest of" if name == "manifest.json" else name
                assert named in result.output.splitlines()[-1], (name, how, result.output)
                path.write_bytes(original)
                cases += 1
        for field in manifest:
            edited = {**manifest, field: "edited" if manifest[field] != "edited" else "x"}
            (version / "manifest.json").write_text(json.dumps(edited))
            _one_line_error(vgg("verify", f"{run}/v001"), 1, "manifest of", "is damaged")
            cases += 1
        (version / "manifest.json").write_bytes(written)
    assert vgg("verify", "A-eval").exit_code == 0  # all restored
    assert cases > 60


def test_a_dataset_replaced_after_training_is_refused_by_evaluate(vgg, eval_root) -> None:
    """Re-sealed (so its own seal holds), but not the manifest model A recorded."""
    edit_manifest(eval_root / "tiny" / "v001", lambda m: m["results"].update(replaced=True))
    _one_line_error(vgg("evaluate", "A"), 1, "tiny/v001 changed since A/v001 recorded it")


def test_a_damaged_model_is_not_evaluated_nor_are_its_stored_posteriors_fused(
    vgg, eval_root
) -> None:
    model = eval_root / "A" / "v001" / "model.pt"
    _flip(model, model.stat().st_size // 2)
    _one_line_error(vgg("evaluate", "A"), 1, "A/v001: model.pt does not match")
    assert [v.status() for v in versions(eval_root / "A-eval")] == [COMPLETE]
    _one_line_error(vgg("fuse", "A-eval", "A2-eval"), 1, "A/v001: model.pt does not match")
    assert not (eval_root / "fuse-A+A2").exists()
    assert vgg("evaluate", "A", "--no-verify").exit_code == 0


def test_a_flipped_byte_in_stored_posteriors_is_not_fused(vgg, eval_root) -> None:
    posteriors = eval_root / "A-eval" / "v001" / "dense.npy"
    _flip(posteriors, posteriors.stat().st_size - 3)
    _one_line_error(vgg("fuse", "A", "A2"), 1, "A-eval/v001: dense.npy does not match")


def test_an_object_array_is_never_unpickled(vgg, eval_root) -> None:
    version = eval_root / "A-eval" / "v001"
    np.save(version / "dense.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _rerecord(version, "dense.npy")  # as if a hostile run recorded it
    _one_line_error(vgg("fuse", "A", "A2"), 1, "not a readable numeric array")


def _rerecord(version: Path, name: str) -> None:
    from vggcli.files import sha256_file

    path = version / name
    record = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    edit_manifest(version, lambda m: m["outputs"].update({name: record}))


def test_one_model_fused_with_itself_is_refused(vgg, eval_root) -> None:
    _one_line_error(vgg("fuse", "A", "A/v001"), 2, "A/v001", "named twice")
    assert vgg("evaluate", "A", "--multi-scale", "--name", "A-again").exit_code == 0
    _one_line_error(vgg("fuse", "A-eval", "A-again"), 2, "A/v001 (dense, Q=35,40,45)")
    assert vgg("fuse", "A", "A2").exit_code == 0


def test_a_truncated_model_is_refused_even_without_hashing(vgg, eval_root) -> None:
    model = eval_root / "A" / "v001" / "model.pt"
    size = model.stat().st_size
    with open(model, "r+b") as fh:
        fh.truncate(size // 2)
    result = vgg("evaluate", "A", "--no-verify")
    _one_line_error(result, 1, f"model.pt is {size // 2} bytes, recorded {size}")


def test_hashing_is_once_per_node_and_redone_when_a_file_changes(tmp_path, monkeypatch) -> None:
    from vggcli import integrity
    from vggcli.errors import WorkFailed
    from vggcli.files import sha256_file

    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 100)
    record = {"size": 100, "sha256": sha256_file(path)}
    assert integrity.check(path, record, "X/v001") == path
    path.write_bytes(b"b" * 100)  # same size, new content and mtime: hashed again
    with pytest.raises(WorkFailed, match="X/v001: f.bin does not match"):
        integrity.check(path, record, "X/v001")
    monkeypatch.setenv("LOCAL_RANK", "1")  # the node's rank 0 hashes; this one checks size
    assert integrity.check(path, record, "X/v001") == path
    assert integrity.damage(path, record, "X/v001", always_hash=True) is not None


def test_a_damaged_val_jpeg_header_fails_evaluation(vgg, eval_root) -> None:
    beton = eval_root / "tiny" / "v001" / "val.beton"
    start = _first_jpeg(beton)
    data = bytearray(beton.read_bytes())
    data[start + 2 : start + 40] = bytes(38)
    beton.write_bytes(bytes(data))
    result = vgg("evaluate", "A", "--no-verify")
    assert result.exit_code == 1 and "1 of 50 validation images failed to decode" in result.output
    assert "Traceback" not in result.output
    assert versions(eval_root / "A-eval")[-1].status() == FAILED


# -- run references -----------------------------------------------------------------------
def test_run_names_resolve_inside_the_runs_root_first(vgg, train_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny" / "train").mkdir(parents=True)  # the source folder beside the runs
    result = vgg("train", "--net", "A", "--data", "tiny", "--dry-run", *TINY)
    assert result.exit_code == 0 and "tiny/v001: 200 training images" in result.output
    _one_line_error(
        vgg("train", "--net", "A", "--data", str(tmp_path / "tiny"), *TINY),
        2,
        "exists but is not a run directory",
    )


# -- versions: claims, resumes, unreadable manifests, full disks ---------------------------
def test_resume_never_starts_a_new_version_when_another_writer_takes_it(train_root, tmp_path):
    process = vgg_process(*TRAIN, "--max-steps", "1", runs_root=train_root)
    assert process.wait(timeout=120) == 0
    version = versions(train_root / "A")[0]
    edit_manifest(version.path, lambda m: m.update(status=RUNNING))  # as a killed run leaves it
    manifest = version.manifest()
    pause = {"VGG_PAUSE_AT": "resume-checked", "VGG_PAUSE_DIR": str(tmp_path)}
    resume = vgg_process(
        "train", "--resume", "A/v001", runs_root=train_root, extra_env=pause
    )
    _wait_for(tmp_path / "resume-checked.reached")
    config = manifest["config"]
    with RunWriter.open(train_root, "A", kind="model", config=config) as writer:
        assert writer.path == version.path  # the other writer took the version
        (tmp_path / "resume-checked.go").touch()
        output, _ = resume.communicate(timeout=60)
    assert resume.returncode == 2, output
    assert "A/v001 is being written by another process; nothing was started" in output
    assert [v.path.name for v in versions(train_root / "A")] == ["v001"]


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_damaged_manifest_is_named_listed_and_blocks_nothing(vgg, tmp_path: Path) -> None:
    """Garbled, of the wrong shape, deleted, edited by hand: every reader says which
    manifest is damaged and how (exit 1), `vgg runs` marks it, and the next command for the
    name makes a new version beside it."""
    root = tmp_path / "runs"
    with RunWriter.open(root, "X", kind="model", config={"a": 1}) as writer:
        writer.set_result("mean_rgb", [120.0, 115.0, 100.0])
    manifest = root / "X" / "v001" / "manifest.json"
    sealed = manifest.read_text()
    edited = sealed.replace("120.0", "0.0")  # a statistic changed by hand
    bad_record = '{"status": "complete", "config": {}, "outputs": {"model.pt": 5}}'
    unsealed = '{"schema_version": 1, "status": "done", "config": {}, "outputs": {}}'  # no seal
    damage = {"{not json": "not readable JSON", "[1, 2]": "a JSON list, not an object",
              '{"status": "complete"}': "'config' missing", bad_record: "not a record of size",
              edited: "does not match its content_sha256", None: "it is missing",
              unsealed: "status 'done' is not complete, failed or running"}
    for garbage, why in damage.items():
        if garbage is None:
            manifest.unlink()
        else:
            manifest.write_text(garbage)
        assert versions(root / "X")[0].status() == DAMAGED
        listed = vgg("runs", "--runs-root", str(root))
        assert listed.exit_code == 0 and "damaged" in listed.output, listed.output
        for command in (["evaluate", "X"], ["verify", "X"], ["verify", "X/v001"]):
            _one_line_error(vgg(*command, "--runs-root", str(root)), 1,
                            f"manifest of {root / 'X' / 'v001'} is damaged", why)
    with RunWriter.open(root, "X", kind="model", config={"a": 1}) as writer:
        assert writer.path.name == "v002"


def test_an_edited_parent_is_caught_in_every_child(vgg, tmp_path: Path) -> None:
    """A dataset's statistic edited (and re-sealed, as a careful hand would) after a model
    recorded it: the model's readers refuse the changed parent; `vgg verify` lists it."""
    from vggcli.artifacts import parent

    root = tmp_path / "runs"
    with RunWriter.open(root, "data", kind="dataset", config={}) as writer:
        writer.set_result("mean_rgb", [120.0, 115.0, 100.0])
    data = versions(root / "data")[0]
    with RunWriter.open(root, "A", kind="model", config={}, parents=[data]):
        pass
    model = versions(root / "A")[0]
    assert parent(model, 0, root) == data
    edit_manifest(data.path, lambda m: m["results"].update(mean_rgb=[0, 0, 0]))
    with pytest.raises(VggError, match="changed since A/v001 recorded it") as caught:
        parent(model, 0, root)
    assert caught.value.exit_code == 1
    checked = vgg("verify", "A", "--runs-root", str(root))
    assert checked.exit_code == 1 and "changed since A/v001 recorded it" in checked.output


def test_a_pipeline_step_passes_over_an_unreadable_version(tmp_path: Path) -> None:
    from vggcli.pipeline import plan as pipeline

    file = tmp_path / "p.toml"
    file.write_text("[[step]]\nname = 'data'\nrun = 'preprocess imagenet'\n")
    plan = pipeline.load(file, tmp_path / "runs")
    (tmp_path / "runs" / "data" / "v001").mkdir(parents=True)  # no manifest at all
    assert pipeline.state(plan, plan.steps[0]) == ("to run", None)


def _in_small_tmpfs(folder: Path, kilobytes: int, script: str) -> subprocess.CompletedProcess:
    """Run `script` (bash) with a tmpfs of this size mounted on `folder`, in a private mount
    namespace (`unshare -rm`), so that the disk really fills."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    folder.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size={kilobytes}k tmpfs {folder}"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        ["unshare", "-rm", "bash", "-c", f"{mount} && {script}"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_full_disk_marks_the_version_failed_and_leaves_no_temporary_file(tmp_path) -> None:
    """The disk is full to the last byte when the writer fails: the failed status still
    lands (rewritten in place) and no half-written temporary file stays."""
    disk = tmp_path / "disk"
    code = (
        "import sys; from pathlib import Path; from vggcli.runs import RunWriter\n"
        "root = Path(sys.argv[1])\n"
        "try:\n"
        "    with RunWriter.open(root, 'X', kind='model', config={'a': 1}) as writer:\n"
        "        fh = open(root / 'filler', 'wb')\n"
        "        try:\n"
        "            while True: fh.write(b'0' * 4096); fh.flush()\n"
        "        except OSError: pass\n"
        "        try: fh.close()\n"
        "        except OSError: pass\n"
        "        writer.set_result('x', 'y' * 10000)  # cannot land: the disk is full\n"
        "except OSError as exc: print('failed with', exc)\n"
    )
    program = tmp_path / "fill.py"
    program.write_text(code)
    version = disk / "X" / "v001"
    script = (
        f"cd {Path.cwd()} && {sys.executable} {program} {disk} && ls -a {version} && "
        f"cat {version}/manifest.json"
    )
    done = _in_small_tmpfs(disk, 1024, script)
    assert "No space left on device" in done.stdout, done.stdout + done.stderr
    listing, manifest = done.stdout.split("\n", 1)[1].split("{", 1)
    assert ".tmp" not in listing and "partial" not in listing, listing
    written = json.loads("{" + manifest)
    assert written["status"] == FAILED and "x" not in written["results"], written


def test_a_full_disk_during_training_fails_cleanly(train_root, tmp_path) -> None:
    disk = tmp_path / "disk"
    (disk / "runs").mkdir(parents=True)
    vgg_cmd = f"{sys.executable} -m vggcli {' '.join(TRAIN)} --checkpoint-steps 1"
    script = (
        f"cd {Path.cwd()} && mkdir -p {disk}/runs && ln -s {train_root}/tiny {disk}/runs/tiny && "
        f"VGG_RUNS={disk}/runs {vgg_cmd}; echo exit=$?; ls -a {disk}/runs/A/v001; "
        f"cat {disk}/runs/A/v001/manifest.json"
    )
    done = _in_small_tmpfs(disk, 1200, script)  # one checkpoint (0.9 MB) fits, not two
    output = done.stdout + done.stderr
    assert "exit=1" in output and "disk full" in output and "Traceback" not in output, output
    manifest = json.loads("{" + done.stdout.split("{", 1)[1])
    assert manifest["status"] == FAILED and "model.pt" not in manifest["outputs"]
    listing = done.stdout.split("exit=1", 1)[1].split("{", 1)[0]
    assert ".tmp" not in listing and ".partial" not in listing, listing

