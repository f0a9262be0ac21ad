#!/usr/bin/env bash
# Install what IMS needs on Debian 12 (as root): apt packages from apt-packages.txt, a venv with requirements.txt.
# With --test, also the test tools (apt-packages-test.txt, requirements-test.txt, the npm lint tool).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[[ "${1:-}" == "--test" ]] && TEST=1

packages=$(grep -hv '^\s*#' apt-packages.txt)
[[ $TEST == 1 ]] && packages="$packages $(grep -hv '^\s*#' apt-packages-test.txt)"
# Debian's nodejs comes without npm (NodeSource's includes it and conflicts with Debian's npm package).
if [[ $TEST == 1 ]] && ! command -v npm >/dev/null; then packages="$packages npm"; fi
missing=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $packages 2>/dev/null | awk '$2 != "installed" {print $1}' || true)
for pkg in $packages; do dpkg-query -W "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
missing=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [[ -n "${missing// /}" ]]; then
  echo "installing apt packages: $missing"
  apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $missing >/dev/null
fi
mkdir -p /run/sshd

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
req=requirements.txt
[[ $TEST == 1 ]] && req=requirements-test.txt
.venv/bin/pip install -q --disable-pip-version-check -r "$req"
.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
if [[ $TEST == 1 ]]; then
  bash scripts/install-test-tools.sh >/dev/null
fi
