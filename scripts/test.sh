#!/usr/bin/env bash
# The whole check: setup, lint, format, types, then the full test suite against real servers
# (clamd, SeaweedFS, fake-gcs-server, started by the pytest fixtures in tests/conftest.py).
# Extra arguments go to pytest. Exits non-zero if any step fails; runs every step regardless,
# so one run reports everything.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

bash scripts/setup.sh || { echo "[test] setup failed" >&2; exit 1; }

V=.venv/bin
failed=()

step() {
    local name="$1"
    shift
    printf '\n[test] == %s: %s\n' "$name" "$*" >&2
    "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '[test] %s failed (exit %d)\n' "$name" "$rc" >&2
        failed+=("$name")
    fi
    return 0
}

step ruff "$V/ruff" check .
step format "$V/ruff" format --check .
step mypy "$V/mypy" --strict fileshare
step deploy bash scripts/lint-deploy.sh

printf '\n[test] == pytest\n' >&2
"$V/pytest" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "[test] pytest collected no tests: that counts as a failure" >&2
    failed+=(pytest)
elif [ "$rc" -ne 0 ]; then
    printf '[test] pytest failed (exit %d)\n' "$rc" >&2
    failed+=(pytest)
fi

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\n[test] FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\n[test] all checks passed\n' >&2
