#!/usr/bin/env bash
# Idempotent setup for development, tests and CI on Debian 12:
#   - Debian packages: clamav-daemon, clamav, clamav-testfiles (clamd and its test files; the
#     test suite builds its own tiny signature database, freshclam is never used), chromium
#     (the docs page is tested in a real headless browser),
#     postgresql when no PostgreSQL server binaries are installed (the tests run their own
#     throwaway clusters with initdb), and python3-venv when this python3 cannot create
#     virtual environments;
#   - Debian's own clamd/freshclam services stopped and disabled (they must not hold ports or
#     burn CPU: tests start their own clamd);
#   - .venv with the project installed in editable mode with its test extras.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# chromium: the headless browser that renders /docs in tests/e2e/test_docs_page.py.
PACKAGES=(clamav-daemon clamav clamav-testfiles chromium)
# Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin (not on PATH).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    PACKAGES+=(postgresql)
fi
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    PACKAGES+=(python3 python3-venv) # Debian 12's python3 is 3.11, as fileshare needs
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    PACKAGES+=(python3-venv)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Keep the packages' maintainer scripts from starting clamd/freshclam and PostgreSQL's
    # default cluster (policy-rc.d 101).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=1
    fi
    restore_policy() { if [ "$created_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
    trap restore_policy EXIT
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}"
    restore_policy
    trap - EXIT
fi

# Debian's clamav services: stopped and disabled, whatever the init system.
services=(clamav-daemon clamav-freshclam)
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for svc in "${services[@]}" clamav-daemon.socket; do
        if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
            log "disabling $svc"
            "${SUDO[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
    done
else
    for svc in "${services[@]}"; do
        if [ -x "/etc/init.d/$svc" ] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
            log "stopping $svc"
            "${SUDO[@]}" "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1 && ls /etc/rc[2-5].d/S*"$svc" >/dev/null 2>&1; then
            "${SUDO[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    done
fi

# Python environment: (re)install when pyproject.toml changed since the last install.
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.fileshare-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import fileshare' >/dev/null 2>&1; then
    log "installing the project into .venv (pip install -e '.[test]')"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    printf '%s\n' "$want" >"$stamp"
fi

log "ready: $(clamd --version 2>/dev/null || /usr/sbin/clamd --version), $(.venv/bin/python --version)"
