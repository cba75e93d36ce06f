# vgg: reproduce the VGG paper. `just demo` runs the demo, `just test` the tests;
# both set up whatever is missing first (Debian packages, .venv, editable install).

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv / "bin"
demo_data := "data/tiny-imagenet"
# The Debian packages FFCV's sdist and our window decoder (setup.py) compile against: named
# here only, installed by `setup`
debian_packages := "pkg-config libturbojpeg0-dev libjpeg-dev libopencv-dev"
# A real one-node Slurm for tests/test_slurm.py (the tests start and stop the daemons themselves)
slurm_packages := "slurmctld slurmd slurm-client munge"
# Every Python package the project runs and tests with, pinned with sha256 hashes
# (`just lock` writes it from pyproject.toml's ranges; `setup` installs exactly it)
lockfile := "requirements.lock"

default:
    @just --list

# Debian packages (FFCV's build, the test Slurm), a Python 3.11 .venv, the locked packages, the project (idempotent)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    scripts/debian-packages.sh {{debian_packages}} --optional {{slurm_packages}}
    fresh=""
    if [ ! -x {{bin}}/python ]; then
        python=$(command -v python3.11 || command -v python3)
        "$python" -m venv {{venv}}
        fresh=1
    fi
    want=$(cat pyproject.toml setup.py vggcli/data/_jpeg_window.c {{lockfile}} | sha256sum | cut -d' ' -f1)
    built=$(ls vggcli/data/_jpeg_window*.so 2>/dev/null || true)  # gone after a `git clean`
    if [ "$(cat {{venv}}/.installed 2>/dev/null)" != "$want" ] || [ -z "$built" ]; then
        echo "installing {{lockfile}} and the project into {{venv}} (torch and ffcv take a few minutes the first time)"
        log=$(mktemp)
        pip_install() {  # a venv this run created and could not fill is removed, not left half-built
            {{bin}}/pip install -q "$@" >"$log" 2>&1 || {
                grep -v "^WARNING: Location" "$log" >&2
                [ -z "$fresh" ] || rm -rf {{venv}}
                exit 1
            }
        }
        # Exactly the files in the lock (torch and torchvision from this machine's disk when it has
        # them). PIP_CONSTRAINT, the lock's pins without hashes (hashes there would demand == of
        # pip's own build requirements), reaches the build environments pip makes for the sdists
        # (ffcv, assertpy, fastargs): they build with the lock's setuptools, wheel and packaging.
        grep -E '^[A-Za-z0-9]' {{lockfile}} | sed 's/ .*//' > "$log.pins"
        PIP_CONSTRAINT="$log.pins" pip_install --require-hashes -r {{lockfile}}
        # The project itself: editable, so it has no hash; built with the lock's setuptools
        # (which compiles vggcli/data/_jpeg_window.c in place)
        pip_install --no-deps --no-build-isolation -e .
        {{bin}}/python -c "import ffcv, torch, vggcli.data.jpeg_window"
        echo "$want" > {{venv}}/.installed
    fi

# pip-compile, in a throwaway venv, writes requirements.lock from pyproject.toml's ranges (dev,
# export and photos extras included): exact pins and the sha256 of every file pip may take for them, from
# PyPI and from the local indexes in pip's config. Pins still inside the ranges are kept: `just
# lock --upgrade` takes the newest allowed, `just lock --upgrade-package numpy` one package.
# Commit the result; `just setup` installs it on the next run.
# Rewrite requirements.lock, the hashed pins `setup` installs (`just lock --upgrade` to move them)
lock *args:
    #!/usr/bin/env bash
    set -euo pipefail
    tools=$(mktemp -d)
    trap 'rm -rf "$tools"' EXIT
    log="$tools/log"
    python=$(command -v python3.11 || command -v python3)
    "$python" -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q pip-tools==7.6.2 >"$log" 2>&1 || { grep -v "^WARNING: Location" "$log" >&2; exit 1; }
    # `-` (stdin) adds setuptools and wheel: what pip puts in the sdists' build environments
    printf 'setuptools\nwheel\n' | CUSTOM_COMPILE_COMMAND="just lock" "$tools/venv/bin/pip-compile" \
        --quiet --generate-hashes --allow-unsafe --extra dev --extra export --extra photos --strip-extras \
        --no-emit-index-url --no-emit-find-links --output-file {{lockfile}} {{args}} pyproject.toml - \
        >"$log" 2>&1 || { grep -v "^WARNING: Location" "$log" >&2; exit 1; }
    sed -i 's|-r -$|sdist builds (justfile: lock)|' {{lockfile}}
    echo "wrote {{lockfile}}: $(grep -c '^[A-Za-z0-9]' {{lockfile}}) packages; \`just setup\` installs it"

# The paper's whole protocol on the embedded tiny dataset (pipelines/smoke.toml), then the report
demo: setup
    #!/usr/bin/env bash
    set -euo pipefail
    [ -d {{demo_data}}/train ] || {{bin}}/vgg make-demo-data {{demo_data}}
    # two ready steps at once, each on half the cores: 1.33x faster on 2 cores (docs/pipeline.md)
    jobs=$(( $(nproc) >= 2 ? 2 : 1 ))
    # A, A-LRN and B-5x5 capped at 20 epochs, not the recipe's 30: the demo's time (docs/train.md)
    {{bin}}/vgg pipeline run pipelines/smoke.toml --jobs "$jobs" --set scratch_cap="--epochs 20"
    {{bin}}/vgg report --pipeline pipelines/smoke.toml

# Self-contained wheels (ffcv and vgg with their C libraries inside, plus the locked packages
# but torch's stack) for machines without compiler, -dev packages or network: dist/wheelhouse
wheelhouse *pythons="3.11 3.12": setup
    scripts/wheelhouse.sh {{pythons}}

# The whole real path on this machine's GPU, measured (--device cpu: the same steps at toy
# sizes): gpu-check/<device>-<time>/gpu-check.md and .json; nothing fetched (docs/install.md)
gpu-check *args:
    scripts/gpu-check.sh {{args}}

# Lint and the whole test suite: a pytest worker per core (pytest-xdist; a test module stays on
# one worker, so its fixtures are made once), then the time it all took
test: setup
    #!/usr/bin/env bash
    set -euo pipefail
    trap 'echo "just test: $SECONDS s (lint and tests)"' EXIT
    {{bin}}/ruff check vggcli tests scripts
    {{bin}}/pytest -q -n auto --dist loadfile --no-loadscope-reorder

# Only the fast tests (skips the end-to-end ones marked slow)
test-fast: setup
    {{bin}}/pytest -q -n auto --dist loadfile -m "not slow"
