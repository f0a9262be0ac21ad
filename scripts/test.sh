#!/usr/bin/env bash
# Install test needs, then run the linters and the whole suite (pass pytest options, e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export PATH="$PWD/.venv/bin:$PATH"
ruff check src tests bench
mypy
exec pytest -p no:cacheprovider "$@"
