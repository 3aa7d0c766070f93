#!/usr/bin/env bash
# Installs (or reuses) the environment, then runs the main job: stim -> rollout on the embedded default.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$here/scripts/install.sh" | tail -n 1)
cd "$here"
exec "$venv/bin/bakehouse" demo "$@"
