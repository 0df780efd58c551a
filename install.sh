#!/usr/bin/env bash
# Installs SST Serve into ./.venv (or $SST_VENV) on a fresh machine.
#
#   ./install.sh          everything to run: the sst CLI, embedded tracker, export, server,
#                         client (the extra [all]; a rig PC that only talks to a server
#                         needs no more than `pip install sst-serve`, the base install)
#   ./install.sh --dev    also the test and lint tools
#   ./install.sh --gpu    also onnxruntime-gpu and tensorrt (needs an NVIDIA GPU)
#
# Why a script and not a bare `pip install .`: sam2 is source-only on PyPI and
# its default isolated build pulls the CUDA build of torch (GBs) just to compile
# an optional CUDA op. We pin the CPU torch first, then build sam2 in the same
# environment without isolation and without the extension.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SST_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
extras=(all)
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(dev) ;;
    --gpu) extras+=(gpu) ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (expected --dev or --gpu)" >&2; exit 2 ;;
  esac
done

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

# torch: the CPU build unless a GPU is present (a bare `torch` is a multi-GB CUDA build).
torch_index=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  torch_index=(--extra-index-url "${SST_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" --retries 0)
fi
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "==> installing torch 2.13.0"
  "${pip[@]}" "${torch_index[@]}" "torch==2.13.0"
fi

# sam2: pure-Python build, no isolation, no CUDA extension.
if ! "$venv/bin/python" -c 'import sam2' 2>/dev/null; then
  echo "==> building sam2 1.1.0 (pure Python)"
  "${pip[@]}" setuptools wheel
  SAM2_BUILD_CUDA=0 "${pip[@]}" --no-deps --no-build-isolation "sam2==1.1.0"
fi

spec="$here[$(IFS=,; echo "${extras[*]}")]"
# sam2 is installed without its dependencies: it lists torchvision, which only parts of
# sam2 that SST Serve does not use import. pip's resolver reports that on every install as
# a red ERROR; it is said here in one plain line instead.
resolver_note() {
  local line noted=0
  while IFS= read -r line; do
    case "$line" in
      "ERROR: pip's dependency resolver does not currently take into account"*) ;;
      "sam2 "*" requires torchvision"*) noted=1 ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
  if [ "$noted" = 1 ]; then
    echo "note: sam2 lists torchvision; SST Serve uses no part of sam2 that needs it, so it is not installed"
  fi
}
echo "==> installing sst-serve ($spec)"
"${pip[@]}" -e "$spec" 2>&1 | resolver_note
echo "==> done: $venv/bin/sst"
