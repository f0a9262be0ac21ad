#!/usr/bin/env bash
# Install what is missing, then run IMS on its embedded default: SeaweedFS S3 + SQLite + local jobs, on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/ims dev up "$@"
