#!/usr/bin/env bash
# Install what IMS needs on Debian 12 (as root): apt packages from apt-packages.txt, a venv with requirements.txt.
# With --test, also the test tools (apt-packages-test.txt, requirements-test.txt, the npm lint tool).
# One line per step on stdout (`==> ...`), so a first run that takes a minute is not silent.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[[ "${1:-}" == "--test" ]] && TEST=1
step() { echo "==> $*"; }

packages=$(grep -hv '^\s*#' apt-packages.txt)
[[ $TEST == 1 ]] && packages="$packages $(grep -hv '^\s*#' apt-packages-test.txt)"
# Debian's nodejs comes without npm (NodeSource's includes it and conflicts with Debian's npm package).
if [[ $TEST == 1 ]] && ! command -v npm >/dev/null; then packages="$packages npm"; fi
missing=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $packages 2>/dev/null | awk '$2 != "installed" {print $1}' || true)
for pkg in $packages; do dpkg-query -W "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
missing=$(echo $missing | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [[ -n "${missing// /}" ]]; then
  step "apt packages: installing $missing(a minute or two)"
  apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $missing >/dev/null
else
  step "apt packages: all $(echo $packages | wc -w) present"
fi
mkdir -p /run/sshd

if [[ ! -x .venv/bin/python ]]; then
  step "Python venv: creating .venv"
  python3 -m venv .venv
else
  step "Python venv: .venv present"
fi
req=requirements.txt
[[ $TEST == 1 ]] && req=requirements-test.txt
step "Python packages: pip install -r $req (quick when they are there already)"
.venv/bin/pip install -q --disable-pip-version-check -r "$req"
# Reinstalling the editable package briefly makes `ims` unimportable for running processes: only when needed.
if ! .venv/bin/python - "$PWD/src/ims" <<'PY' 2>/dev/null
import sys, pathlib, importlib.metadata as md, ims
ok = pathlib.Path(ims.__file__).parent == pathlib.Path(sys.argv[1]) and md.version("ims")
sys.exit(0 if ok else 1)
PY
then
  step "ims: installing this tree into .venv (editable)"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
else
  step "ims: this tree is installed in .venv"
fi
if [[ $TEST == 1 ]]; then
  step "test tools"
  bash scripts/install-test-tools.sh >/dev/null
fi
