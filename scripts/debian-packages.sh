#!/usr/bin/env bash
# `just setup`'s first step: install the Debian packages named (`--optional` ones after it may
# be left out). Missing required packages without root or passwordless sudo (most GPU
# clusters) are one line naming them and the wheelhouse route, and exit 1: nothing else of
# the set-up runs, so no half-built .venv is left behind.
set -euo pipefail
required=() optional=()
target=required
for arg in "$@"; do
    if [ "$arg" = "--optional" ]; then target=optional; continue; fi
    dpkg -s "$arg" >/dev/null 2>&1 && continue
    if [ "$target" = required ]; then required+=("$arg"); else optional+=("$arg"); fi
done
[ ${#required[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    if [ ${#required[@]} -gt 0 ]; then
        echo "error: missing Debian packages ${required[*]} and no root or sudo to install them: ask an admin to install them, or install from a wheelhouse built elsewhere (\`just wheelhouse\`, then \`pip install --no-index --find-links dist/wheelhouse vgg\`; docs/install.md)" >&2
        exit 1
    fi
    echo "note: ${optional[*]} not installed (no root or sudo): the tests that need them are skipped" >&2
    exit 0
fi
echo "installing Debian packages: ${required[*]} ${optional[*]}"
"${sudo[@]}" apt-get update -qq
install() { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null; }
[ ${#required[@]} -eq 0 ] || install "${required[@]}"
if [ ${#optional[@]} -gt 0 ] && ! install "${optional[@]}"; then
    echo "note: could not install ${optional[*]}: the tests that need them are skipped" >&2
fi
