#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs.
# Usage: bash tests/run.sh [pytest args]
# Works in a virtual environment or on the machine's own Python (`python` on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages (Debian/Ubuntu): SoftHSM2 for the PKCS#11 tests, PostgreSQL's
# server binaries for the key-server tests (they run their own initdb).
apt_packages=()
command -v softhsm2-util >/dev/null 2>&1 || apt_packages+=(softhsm2)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || apt_packages+=(postgresql)
if [ ${#apt_packages[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${apt_packages[@]}" >/dev/null
fi

# Python packages: encfs with every extra the tests use, at the versions locked
# in tests/constraints/ for this Python (refresh them with bash tests/lock.sh).
# Without a lock file pip resolves on its own, which can take a long time.
pyver=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
constraints=tests/constraints/py$pyver.txt
pin=()
if [ -f "$constraints" ]; then
    pin=(-c "$constraints")
else
    echo "tests/run.sh: no $constraints; installing without a lock (Python $pyver is untested)" >&2
fi
# --no-compile: byte-compiling ~1 GB of packages took a third of the install
# time; Python compiles what the tests import on first use.
python -m pip install -q --disable-pip-version-check --no-compile ${pin[@]+"${pin[@]}"} -e ".[test]" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; } >&2
echo "tests/run.sh: installed in $SECONDS s; running pytest" >&2

exec python -m pytest -q -p no:cacheprovider "$@"
