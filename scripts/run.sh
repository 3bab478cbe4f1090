#!/usr/bin/env bash
# Run fileshare locally on its embedded defaults: local-directory storage in ./data and a local
# clamd (Debian's, with the test signature database: EICAR and clamav-testfiles are detected)
# on 127.0.0.1:${CLAMD_PORT:-3310}, configured by config/clamd.dev.conf. clamd is stopped when
# this script exits.
#
#   bash scripts/run.sh                       # serve with a development API key
#   FILESHARE_API_KEYS=... bash scripts/run.sh
#   FILESHARE_MAX_UPLOAD_SIZE=1GiB CLAMD_PORT=3311 bash scripts/run.sh   # clamd follows the limit
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

CLAMD_PORT="${CLAMD_PORT:-3310}"
export FILESHARE_API_KEYS="${FILESHARE_API_KEYS:-dev:dev-key-change-me-0123456789}"
# clamd's StreamMaxLength follows fileshare's upload limit (FILESHARE_MAX_UPLOAD_SIZE, 512 MiB
# by default): the limit must never exceed what clamd will scan.
if [ -z "${CLAMD_MAX_STREAM:-}" ]; then
    CLAMD_MAX_STREAM=$(.venv/bin/python -c \
        'from fileshare.config import load_settings; print(load_settings().max_upload_size)')
fi

mkdir -p .servers
.venv/bin/python -m tests.servers clamd --port "$CLAMD_PORT" --max-stream "$CLAMD_MAX_STREAM" \
    --dir .servers >.servers/clamd.json &
CLAMD_PID=$!
APP_PID=""

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$APP_PID" ] && kill -0 "$APP_PID" 2>/dev/null; then
        kill -TERM "$APP_PID" 2>/dev/null || true
        wait "$APP_PID" 2>/dev/null || true
    fi
    if kill -0 "$CLAMD_PID" 2>/dev/null; then
        kill -TERM "$CLAMD_PID" 2>/dev/null || true
        wait "$CLAMD_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# Wait for our clamd: its launcher prints one JSON line once clamd is up (or exits on error,
# e.g. when the port is taken), then make sure it answers PING.
for ((i = 0; i < 600; i++)); do
    [ -s .servers/clamd.json ] && break
    if ! kill -0 "$CLAMD_PID" 2>/dev/null; then
        echo "[run] clamd did not start (see the error above)" >&2
        exit 1
    fi
    sleep 0.1
done
if ! .venv/bin/python -m tests.servers ping "tcp://127.0.0.1:$CLAMD_PORT" --timeout 10; then
    echo "[run] clamd does not answer PING on 127.0.0.1:$CLAMD_PORT" >&2
    exit 1
fi
echo "[run] clamd ready: $(cat .servers/clamd.json)" >&2

export FILESHARE_STORAGE="${FILESHARE_STORAGE:-local}"
export FILESHARE_DATA_DIR="${FILESHARE_DATA_DIR:-./data}"
export FILESHARE_CLAMD="tcp://127.0.0.1:$CLAMD_PORT"
mkdir -p "$FILESHARE_DATA_DIR"

# Run the service in the foreground; SIGINT/SIGTERM are passed on for a graceful drain.
.venv/bin/fileshare serve "$@" &
APP_PID=$!
trap 'kill -TERM "$APP_PID" 2>/dev/null || true' INT TERM
status=0
while kill -0 "$APP_PID" 2>/dev/null; do
    wait "$APP_PID" && status=0 || status=$?
done
exit "$status"
