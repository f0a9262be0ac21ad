#!/usr/bin/env bash
# Installs the Node tools the tests call (Redocly CLI, pinned in package.json/package-lock.json) into ./node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null; then
    echo "install-test-tools: npm is missing (apt-get install nodejs npm)" >&2
    exit 1
fi
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
node_modules/.bin/redocly --version
