#!/usr/bin/env bash
# Run IMS as two systemd services on this machine (as root): ims-s3 (the embedded SeaweedFS S3) and ims
# (`ims serve`: the API and its workers), from this checkout's .venv. One line per step.
#
#   bash scripts/install-service.sh [--no-start] [--no-deps]
#
# Writes /etc/ims/ims.env (settings and the S3 keys, mode 600; kept when it exists), the units from
# contrib/systemd/ into /etc/systemd/system, then `systemctl enable --now ims-s3.service ims.service`.
# Paths and ports can be moved: IMS_ENV_FILE, IMS_SYSTEMD_DIR, IMS_SERVICE_DATA_DIR (/var/lib/ims),
# IMS_SERVICE_PORT (9100), IMS_SERVICE_S3_PORT (8333).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
START=1
DEPS=1
for arg in "$@"; do
  case $arg in
    --no-start) START=0 ;;
    --no-deps) DEPS=0 ;;
    *) echo "usage: $0 [--no-start] [--no-deps]" >&2; exit 2 ;;
  esac
done
UNIT_DIR=${IMS_SYSTEMD_DIR:-/etc/systemd/system}
ENV_FILE=${IMS_ENV_FILE:-/etc/ims/ims.env}
DATA_DIR=${IMS_SERVICE_DATA_DIR:-/var/lib/ims}
PORT=${IMS_SERVICE_PORT:-9100}
S3_PORT=${IMS_SERVICE_S3_PORT:-8333}
step() { echo "==> $*"; }

if [[ $DEPS == 1 ]]; then
  bash scripts/install.sh
fi
IMS=$REPO/.venv/bin/ims
[[ -x $IMS ]] || { echo "$IMS is missing: run without --no-deps" >&2; exit 1; }

step "data directory: $DATA_DIR"
mkdir -p "$DATA_DIR"
chmod 700 "$DATA_DIR"
if [[ -f $ENV_FILE ]]; then
  step "settings: keeping $ENV_FILE"
else
  step "settings: writing $ENV_FILE (API on 127.0.0.1:$PORT, S3 on 127.0.0.1:$S3_PORT, new S3 keys)"
  mkdir -p "$(dirname "$ENV_FILE")"
  (umask 077 && "$REPO/.venv/bin/python" -m ims.cli.dev service-env "$DATA_DIR" "$S3_PORT" "$PORT" >"$ENV_FILE.tmp")
  mv "$ENV_FILE.tmp" "$ENV_FILE"
fi

step "units: $UNIT_DIR/ims-s3.service and $UNIT_DIR/ims.service"
mkdir -p "$UNIT_DIR"
for unit in ims-s3.service ims.service; do
  sed -e "s|@IMS@|$IMS|g" -e "s|@ENV_FILE@|$ENV_FILE|g" -e "s|@DOCS@|$REPO|g" "contrib/systemd/$unit" >"$UNIT_DIR/$unit.tmp"
  chmod 644 "$UNIT_DIR/$unit.tmp"
  mv "$UNIT_DIR/$unit.tmp" "$UNIT_DIR/$unit"
done

if [[ $START == 0 ]]; then
  step "not started (--no-start): systemctl daemon-reload && systemctl enable --now ims-s3.service ims.service"
  exit 0
fi
init=$(cat /proc/1/comm 2>/dev/null || echo unknown)
if [[ $init != systemd ]]; then
  step "not started: systemd is not running on this machine (PID 1 is $init)"
  echo "    on a systemd host: systemctl daemon-reload && systemctl enable --now ims-s3.service ims.service"
  exit 0
fi
step "starting: systemctl daemon-reload && systemctl enable --now ims-s3.service ims.service"
systemctl daemon-reload
systemctl enable --now ims-s3.service ims.service
step "IMS API: http://127.0.0.1:$PORT   status: systemctl status ims ims-s3   logs: journalctl -u ims -u ims-s3 -f"
