#!/usr/bin/env bash
# Gathers into one folder the wheels that the GPU machine's image lacks for this project's
# GPU benchmark (python -m sst.benchmarks.gpu), and checks that the folder and the working
# tree that travels with it fit the 64 MiB a device run may carry.
#
#   bash benchmarks/gpu/pack.sh [--out DIR] [--with-triton] [--with-tritonserver]
#                               [--also SPEC]... [--python-version X.Y] [--dry-run]
#
#   --out DIR             folder to fill (emptied first; default dist/gpu-wheels, which git
#                         ignores: name it in the device call's carry list)
#   --with-triton         also Triton's client: tritonclient, python-rapidjson, and the grpcio
#                         and protobuf it was tested with (about 9 MiB), built for the GPU
#                         machine's Python (--python-version, default 3.12)
#   --with-tritonserver   also nvidia-pytriton (its tritonserver, about 53 MiB)
#   --also SPEC           one more requirement (repeatable), e.g. --also natsort
#   --python-version X.Y  Python of the machine the binary wheels are for (default 3.12)
#   --limit-mib N         limit of this folder plus the working tree (default 64)
#   --dry-run             print the requirements, one per line, and stop
#
# The image has torch, numpy 2, onnx, onnxruntime, pillow, psutil, matplotlib, grpcio,
# protobuf, opencv, scipy, pyyaml, tqdm and portalocker. Pure-Python wheels are built here:
# sam2 1.1.0 without its CUDA extension (as install.sh builds it), hydra-core, omegaconf,
# antlr4-python3-runtime 4.9.3 (the one hydra needs), iopath, portalocker, tifffile and
# natsort (what sst.tracker.io reads images and orders files with; the client imports
# it), and this project. Versions are the ones installed in this environment ($PYTHON, default
# .venv/bin/python), so the GPU run uses what was tested here. Needs PyPI (or a pip cache
# that holds them); prints the install command at the end.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="$root/dist/gpu-wheels"
with_triton=0
with_server=0
dry_run=0
also=()
pyver="3.12"
limit_mib=64
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --with-triton) with_triton=1; shift ;;
    --with-tritonserver) with_server=1; shift ;;
    --also) also+=("$2"); shift 2 ;;
    --python-version) pyver="$2"; shift 2 ;;
    --limit-mib) limit_mib="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
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
      "portalocker==$(version portalocker)" "tifffile==$(version tifffile)"
      "natsort==$(version natsort)" "platformdirs==$(version platformdirs)"
      ${also[@]+"${also[@]}"})
binary=()
if [ "$with_triton" = 1 ]; then
  binary+=("tritonclient==$(version tritonclient)" "python-rapidjson==$(version python-rapidjson)"
           "grpcio==$(version grpcio)" "protobuf==$(version protobuf)")
fi
if [ "$with_server" = 1 ]; then
  binary+=("nvidia-pytriton==$(version nvidia-pytriton)")
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
# the working tree travels too: tracked files and untracked ones git does not ignore
tree=$(git -C "$root" ls-files -z --cached --others --exclude-standard \
  | (cd "$root" && xargs -0 -r stat -c %s 2>/dev/null) | awk '{ s += $1 } END { print s + 0 }')
awk -v b="$bytes" -v t="$tree" -v l="$limit_mib" 'BEGIN {
  printf "  total %.1f MiB, with the working tree (%.1f MiB) %.1f MiB of %d MiB allowed\n",
         b / 1048576, t / 1048576, (b + t) / 1048576, l }'
if [ $((bytes + tree)) -gt $((limit_mib * 1024 * 1024)) ]; then
  echo "pack.sh: $out ($bytes bytes) and the working tree ($tree bytes) are over the" \
       "$limit_mib MiB a device run carries; pack less" >&2
  exit 1
fi
rel="${out#"$root"/}"  # relative to the repository root when inside it
cat <<MSG
On the GPU machine, in the repository root (with $rel in the run's carry list):
  python3 -m pip install --no-index --no-deps --target /tmp/sst-site $rel/*.whl
  export PYTHONPATH=/tmp/sst-site
MSG
