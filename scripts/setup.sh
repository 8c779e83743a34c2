#!/usr/bin/env bash
# Install what portable-k3s needs on a Debian machine (run as root): the lab's system packages, and a
# virtualenv in .venv with the package and its test/dev extras. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

system_packages=(mmdebstrap systemd-container iptables iproute2 openssh-client ca-certificates gcc libc6-dev zstd)
if [ "$(id -u)" = 0 ]; then
    missing=()
    for pkg in "${system_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
else
    echo "setup: not root: skipping system packages (${system_packages[*]}); the lab needs root" >&2
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: $python is $("$python" --version 2>&1); portable-k3s needs Python >= 3.11" >&2
    exit 1
}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv || {
        echo "setup: '$python -m venv' failed; on Debian install python3-venv" >&2
        exit 1
    }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'
