#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and prints its path on the last line.
#
# The venv lives outside the clone, keyed by the hash of its lock, so repeated installs and CI runs
# on one machine reuse it; a changed lock gets a fresh venv. The lock: requirements-gpu.lock (CUDA
# vllm and torch) on a machine with an NVIDIA GPU, else requirements.lock (CPU builds);
# BAKEHOUSE_DEVICE=cuda|cpu chooses instead.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
device="${BAKEHOUSE_DEVICE:-}"
if [ -z "$device" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then device=cuda; else device=cpu; fi
fi
case "$device" in
  cuda) lock="$here/requirements-gpu.lock" ;;
  cpu) lock="$here/requirements.lock" ;;
  *) echo "bakehouse: BAKEHOUSE_DEVICE must be cuda or cpu, not '$device'" >&2; exit 2 ;;
esac
key=$(sha256sum "$lock" | cut -c1-16)
venv="${BAKEHOUSE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bakehouse/venv-$key}"

if [ ! -f "$venv/.complete" ]; then
  echo "bakehouse: creating environment in $venv (about 3 minutes, once)" >&2
  rm -rf "$venv"
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
  # --no-deps: the lock is a complete, resolved set; pip's resolver only slows it down.
  log="$venv.install.log"
  if ! "$venv/bin/pip" install --no-deps -r "$lock" >"$log" 2>&1; then
    tail -n 30 "$log" >&2; echo "bakehouse: install failed, full log in $log" >&2; exit 1
  fi
  if [ "$device" = cpu ]; then
    # PyPI's torchvision/torchaudio are built against CUDA torch and break `import vllm` on CPU.
    "$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  fi
  touch "$venv/.complete"
fi
# The project itself: editable, so the clone is what runs. Cheap when already installed.
# -I: the check must not find the clone through the current directory.
if [ ! -x "$venv/bin/bakehouse" ] || ! "$venv/bin/python" -I -c "import bakehouse, sys; sys.exit(0 if bakehouse.__file__.startswith('$here/') else 1)" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$here" >/dev/null 2>&1 \
    || "$venv/bin/pip" install --no-deps --no-build-isolation -e "$here" >&2
fi
echo "$venv"
