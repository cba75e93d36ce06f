"""The wheelhouse (`just wheelhouse`): ffcv and vgg wheels that carry their C libraries,
installed with `--no-index` into a fresh venv whose torch comes from elsewhere (as a cluster
module provides it), where the gpu check runs every step on the CPU (data, preprocess,
training with both decode paths, torchrun, evaluation, ONNX export); and `just setup`'s
one line when Debian packages are missing and there is no root."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MB = 40  # ffcv + vgg, per Python version
# torch and what it needs: provided to the venv from this checkout's .venv, as a module would
PROVIDED = re.compile(
    r"^(torch|torchvision|functorch|torchgen|triton|nvidia|cuda|sympy|mpmath|networkx|jinja2"
    r"|markupsafe|fsspec|filelock|typing_extensions)([-_.].*)?$",
    re.IGNORECASE,
)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    built = subprocess.run(
        ["bash", "scripts/wheelhouse.sh", version], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "WHEELHOUSE": str(out)},
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def _ours(wheelhouse: Path) -> list[Path]:
    wheels = sorted(wheelhouse.glob("ffcv-*.whl")) + sorted(wheelhouse.glob("vgg-*.whl"))
    assert len(wheels) == 2, wheels
    return wheels


def test_ffcv_and_vgg_wheels_carry_every_library_they_load(wheelhouse: Path, tmp_path) -> None:
    """Unpacked, every library each extension module loads resolves (ldd), and every shared
    object in the wheel needs only libraries inside the wheel or on its manylinux policy's
    allow-list (auditwheel's own rule): nothing from this machine's -dev packages."""
    wheels = _ours(wheelhouse)
    assert sum(w.stat().st_size for w in wheels) <= BUDGET_MB * 2**20
    tools = Path(sysconfig.get_path("scripts"))
    for wheel in wheels:
        shown = subprocess.run([tools / "auditwheel", "show", wheel], capture_output=True,
                               text=True, check=True).stdout
        assert "is consistent with the following platform tag" in " ".join(shown.split())
        folder = tmp_path / wheel.stem
        zipfile.ZipFile(wheel).extractall(folder)
        objects = list(folder.rglob("*.so*"))
        inside = {p.name for p in objects}
        allowed = _allow_list(re.search(r"manylinux_\d+_\d+", wheel.name).group(0))
        extensions = [p for p in objects if not p.parent.name.endswith(".libs")]
        assert extensions and len(objects) > len(extensions), wheel.name  # libraries vendored
        for extension in extensions:
            out = subprocess.run(["ldd", extension], capture_output=True, text=True, check=True)
            assert "not found" not in out.stdout, out.stdout
        for shared in objects:
            needed = subprocess.run([tools / "patchelf", "--print-needed", shared],
                                    capture_output=True, text=True, check=True).stdout.split()
            outside = [n for n in needed if n not in inside and n not in allowed]
            assert not outside, f"{wheel.name}: {shared.name} needs {outside} from the system"


def _allow_list(tag: str) -> set[str]:
    """The system libraries a wheel of this manylinux tag may need (auditwheel's policy)."""
    import auditwheel

    policies = Path(auditwheel.__file__).parent / "policy" / "manylinux-policy.json"
    for policy in json.loads(policies.read_text()):
        if policy["name"] == tag or tag in policy.get("aliases", []):
            return set(policy["lib_whitelist"]) | {"ld-linux-x86-64.so.2"}
    raise AssertionError(f"no manylinux policy named {tag}")


def test_wheelhouse_installs_offline_beside_a_provided_torch_and_runs(
    wheelhouse: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    provided = tmp_path / "provided"  # torch as a cluster module would provide it
    provided.mkdir()
    ours = Path(sysconfig.get_path("purelib"))
    for entry in ours.iterdir():
        if PROVIDED.match(entry.name):
            (provided / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "provided.pth").write_text(f"{provided}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip config names local wheel folders
    install = subprocess.run(
        # --no-compile: bytecode is written on first import anyway; compiling every installed
        # file up front was a third of this test's time
        [venv / "bin" / "pip", "install", "-q", "--no-compile", "--no-index", "--find-links",
         wheelhouse, "vgg[export]"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run(
        [venv / "bin" / "python", "-c",
         "import ffcv, torch, vggcli.data.jpeg_window as w; print(ffcv.__file__, w.__file__,"
         " torch.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    ).stdout.split()
    assert where[0].startswith(str(site)) and where[1].startswith(str(site)), where
    assert where[2].startswith(str(provided)), where  # torch was not installed again

    # the whole real path (`just gpu-check --device cpu`), as a GPU node runs it from here
    check = subprocess.run(
        [venv / "bin" / "python", ROOT / "scripts" / "gpu_check.py", "--device", "cpu",
         "--out", tmp_path / "check"], capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    steps = json.loads((tmp_path / "check" / "gpu-check.json").read_text())["steps"]
    assert [s["result"] for s in steps] == ["ok"] * 9, steps
    (auto,) = [s for s in steps if s["step"] == "decode auto"]
    assert auto["decode"] == "ffcv" and "host_img_s" not in auto  # a CPU: nothing to measure
    assert "| torchrun equality | ok |" in (tmp_path / "check" / "gpu-check.md").read_text()


def test_setup_without_root_names_the_packages_in_one_line() -> None:
    """As an unprivileged user with no sudo: one line, exit 1, nothing installed."""
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to become another user")
    with tempfile.TemporaryDirectory() as folder:  # in /tmp: readable by that user
        Path(folder).chmod(0o755)
        script = Path(folder) / "debian-packages.sh"
        shutil.copy(ROOT / "scripts" / "debian-packages.sh", script)
        script.chmod(0o755)
        run = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", script,
             "bash", "no-such-package-here", "--optional", "also-not-here"],
            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=folder,
        )
    assert run.returncode == 1 and run.stdout == "", run
    (line,) = run.stderr.strip().splitlines()
    assert "missing Debian packages no-such-package-here and no root or sudo" in line
    assert "just wheelhouse" in line and "also-not-here" not in line
