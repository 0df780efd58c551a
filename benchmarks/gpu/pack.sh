#!/usr/bin/env bash
# Gathers into one folder the wheels that a GPU machine with only PyTorch, numpy, onnx and
# (CPU) ONNX Runtime needs to run this project's GPU benchmark, and checks the folder fits
# the 64 MiB a device run may carry.
#
#   bash benchmarks/gpu/pack.sh [--out DIR] [--with-triton] [--also SPEC]... [--dry-run]
#
#   --out DIR             folder to fill (emptied first; default dist/gpu-wheels)
#   --with-triton         also nvidia-pytriton (its tritonserver) and tritonclient, with the
#                         grpcio and protobuf tritonclient's gRPC code needs, built for the
#                         GPU machine's Python (--python-version, default 3.12)
#   --also SPEC           one more requirement (repeatable), e.g. --also PyYAML --also pillow
#                         for a machine without them
#   --limit-mib N         size limit of the folder (default 64)
#   --dry-run             print the requirements, one per line, and stop
#
# Pure-Python wheels are built here: sam2 1.1.0 without its CUDA extension (as install.sh
# builds it), hydra-core, omegaconf, antlr4-python3-runtime 4.9.3 (the one hydra needs),
# iopath, portalocker, and this project. Versions are the ones installed in this
# environment ($PYTHON, default .venv/bin/python), so the GPU run uses what was tested
# here. Needs PyPI (or a pip cache that holds them); prints the install command at the end.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="$root/dist/gpu-wheels"
with_triton=0
dry_run=0
also=()
pyver="3.12"
limit_mib=64
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --with-triton) with_triton=1; shift ;;
    --also) also+=("$2"); shift 2 ;;
    --python-version) pyver="$2"; shift 2 ;;
    --limit-mib) limit_mib="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "pack.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

version() {  # installed version of a distribution in this environment
  "$python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null \
    || { echo "pack.sh: $1 is not installed in $python; run ./install.sh" >&2; exit 2; }
}
sam2="sam2==1.1.0"
pure=("hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
      "antlr4-python3-runtime==4.9.3" "iopath==$(version iopath)"
      "portalocker==$(version portalocker)" ${also[@]+"${also[@]}"})
binary=()
if [ "$with_triton" = 1 ]; then
  binary=("nvidia-pytriton==$(version nvidia-pytriton)" "tritonclient==$(version tritonclient)"
          "grpcio==$(version grpcio)" "protobuf==$(version protobuf)")
fi
if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$sam2" "${pure[@]}" "sst-serve==$(version sst-serve)" ${binary[@]+"${binary[@]}"}
  exit 0
fi

if ! "$python" -c 'import torch, setuptools' 2>/dev/null; then
  echo "pack.sh: $python lacks torch or setuptools (sam2's build needs both); run ./install.sh" >&2
  exit 2
fi
pip=("$python" -m pip --disable-pip-version-check)
rm -rf "$out"
mkdir -p "$out"
echo "==> $sam2, pure Python (SAM2_BUILD_CUDA=0)"
SAM2_BUILD_CUDA=0 "${pip[@]}" wheel --quiet --no-deps --no-build-isolation -w "$out" "$sam2"

echo "==> ${pure[*]}"
"${pip[@]}" wheel --quiet --no-deps -w "$out" "${pure[@]}"

echo "==> sst-serve (this working tree)"
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
# build from a copy of the tracked and new files, so no build/ or egg-info lands in the tree
while IFS= read -r -d '' f; do
  [ -e "$root/$f" ] && printf '%s\0' "$f"
done < <(git -C "$root" ls-files -z --cached --others --exclude-standard) \
  | tar -C "$root" --null -T - -cf - | tar -xf - -C "$src"
"${pip[@]}" wheel --quiet --no-deps --no-build-isolation -w "$out" "$src"

if [ "${#binary[@]}" -gt 0 ]; then
  echo "==> ${binary[*]} (Python $pyver, x86-64 Linux)"
  platforms=()
  for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 \
           manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
           manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
  done
  "${pip[@]}" download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$pyver" "${platforms[@]}" -d "$out" "${binary[@]}"
fi

echo "==> $out"
ls -l "$out" | awk 'NR > 1 { printf "  %8.1f MiB  %s\n", $5 / 1048576, $9 }'
bytes=$(find "$out" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
awk -v b="$bytes" -v l="$limit_mib" 'BEGIN { printf "  total %.1f MiB of %d MiB allowed\n", b / 1048576, l }'
if [ "$bytes" -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "pack.sh: $out holds $bytes bytes, over the $limit_mib MiB limit; pack less" >&2
  exit 1
fi
rel="${out#"$root"/}"  # relative to the repository root when inside it
cat <<MSG
On the GPU machine, in the repository root (with $rel carried along):
  python3 -m pip install --no-index --no-deps --target /tmp/sst-site $rel/*.whl
  export PYTHONPATH=/tmp/sst-site
MSG
