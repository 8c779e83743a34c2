#!/usr/bin/env bash
# Set everything up, bring up the local lab (4 hosts on a "cloud" and a "home" site), deploy to it, and serve its
# public apps: the last lines show the command that fetches one through the entrance, as the internet would.
# Tear it down with: .venv/bin/python -m portable_k3s.lab down
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m portable_k3s.lab up --hosts "${LAB_HOSTS:-4}"
.venv/bin/python -m portable_k3s check inventories/lab.py
.venv/bin/pyinfra inventories/lab.py deploy.py -y "$@"
exec .venv/bin/python -m portable_k3s.lab serve
