#!/usr/bin/env bash
# Installs (or reuses) the environment, then runs the whole test suite. Extra args go to pytest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$here/scripts/install.sh" | tail -n 1)
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
