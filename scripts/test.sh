#!/usr/bin/env bash
# Set everything up and run all tests: lint, types, unit tier, lab tier (root: boots a lab of 4 hosts,
# deploys twice, runs the testinfra suite against it, and tears the lab down again).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy portable_k3s
exec .venv/bin/pytest --durations=25 tests/unit tests/lab "$@"
