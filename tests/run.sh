#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: SoftHSM2 for the PKCS#11 tests (Debian/Ubuntu).
if ! command -v softhsm2-util >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq softhsm2 >/dev/null
fi

# Python packages: encfs itself with every extra the tests use.
python -m pip install -q --disable-pip-version-check -e ".[test]"

exec python -m pytest -q -p no:cacheprovider "$@"
