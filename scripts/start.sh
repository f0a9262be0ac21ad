#!/usr/bin/env bash
# Install what is missing, then run IMS on its embedded default: SeaweedFS S3 + SQLite + local jobs, on 127.0.0.1.
# Every step prints one line (`==> ...`); then the stack prints where it listens. Stop it with Ctrl-C (or
# `kill -TERM` of the PID it prints): SeaweedFS and the API stop together. Options go to `ims dev up`
# (--port, --s3-port, --data-dir, --host).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "==> starting IMS: .venv/bin/ims dev up $*"
exec .venv/bin/ims dev up "$@"
