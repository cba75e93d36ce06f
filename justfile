# vgg: reproduce the VGG paper. `just demo` runs the demo, `just test` the tests;
# both set up whatever is missing first (Debian packages, .venv, editable install).

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv / "bin"
demo_data := "data/tiny-imagenet"

default:
    @just --list

# Debian packages FFCV compiles against, a Python 3.11 .venv, the project (idempotent)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=""
    for pkg in pkg-config libturbojpeg0-dev libopencv-dev; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing Debian packages:$missing"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
    fi
    if [ ! -x {{bin}}/python ]; then
        python=$(command -v python3.11 || command -v python3)
        "$python" -m venv {{venv}}
    fi
    want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
    if [ "$(cat {{venv}}/.installed 2>/dev/null)" != "$want" ]; then
        echo "installing the project into {{venv}} (torch and ffcv take a few minutes the first time)"
        log=$(mktemp)
        pip_install() {
            {{bin}}/pip install -q "$@" >"$log" 2>&1 || { grep -v "^WARNING: Location" "$log" >&2; exit 1; }
        }
        pip_install torch==2.14.1 torchvision==0.29.1  # from this machine's disk when it has them
        pip_install -e '.[dev]'
        {{bin}}/python -c "import ffcv, torch, vggcli"
        echo "$want" > {{venv}}/.installed
    fi

# The paper's whole protocol on the embedded tiny dataset (pipelines/smoke.toml), then the report
demo: setup
    #!/usr/bin/env bash
    set -euo pipefail
    [ -d {{demo_data}}/train ] || {{bin}}/vgg make-demo-data {{demo_data}}
    {{bin}}/vgg pipeline run pipelines/smoke.toml
    {{bin}}/vgg report --pipeline pipelines/smoke.toml

# Lint and the whole test suite
test: setup
    {{bin}}/ruff check vggcli tests
    {{bin}}/pytest -q

# Only the fast tests (skips the end-to-end ones marked slow)
test-fast: setup
    {{bin}}/pytest -q -m "not slow"
