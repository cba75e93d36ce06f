#!/usr/bin/env bash
# `just gpu-check [--device cpu] [--out DIR]`: scripts/gpu_check.py with nothing fetched.
# Where this machine's python3 already has torch (a GPU node: a cluster module, a container)
# and dist/wheelhouse exists (`just wheelhouse`, copied over), a venv over that Python
# (--system-site-packages: its torch, torchvision, numba, OpenCV) gets ffcv, vgg and whatever
# else is missing from the wheelhouse, offline. Elsewhere the project's .venv (`just setup`).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
if [ -d dist/wheelhouse ] && python3 -c "import torch" 2>/dev/null; then
    venv=.gpu-venv
    [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
    log=$(mktemp)
    # ffcv and vgg again each time (their versions do not change when the wheelhouse is
    # rebuilt), then what else is missing
    { "$venv/bin/pip" install -q --no-index --find-links dist/wheelhouse --force-reinstall \
        --no-deps vgg ffcv &&
      "$venv/bin/pip" install -q --no-index --find-links dist/wheelhouse "vgg[export]"; } >"$log" 2>&1 || {
        grep -v "^WARNING" "$log" >&2
        echo "error: vgg did not install from dist/wheelhouse (above: what is missing); build it with \`just wheelhouse\` for this Python, $(python3 -V)" >&2
        exit 1
    }
    python="$venv/bin/python"
elif [ ! -x "$python" ]; then
    echo "error: no .venv and no python3 with torch beside dist/wheelhouse: run \`just setup\`, or \`just wheelhouse\` and copy dist/ here" >&2
    exit 1
fi
exec "$python" scripts/gpu_check.py "$@"
