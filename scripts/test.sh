#!/usr/bin/env bash
# Installs (or reuses) the environment, then runs the whole test suite. Extra args go to pytest.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$here/scripts/install.sh" | tail -n 1)
cd "$here"
# The viewer's tests drive Debian's headless Chromium: install it where it is missing and we may.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >&2 \
    || echo "bakehouse: could not install chromium; the viewer tests will be skipped" >&2
fi
exec "$venv/bin/python" -m pytest "$@"
