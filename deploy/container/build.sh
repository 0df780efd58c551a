#!/usr/bin/env bash
# Builds SST Serve's container image with podman and prints its name on the last line.
#
#   deploy/container/build.sh [--cpu|--gpu] [--tag TAG]
#
#   --cpu (default)  sst-serve:<version>-cpu on a Debian 12 base root filesystem that
#                    mmdebstrap makes from Debian's packages (no image registry needed),
#                    cached and imported once as sst-serve-base:bookworm; every Python
#                    package comes from a wheelhouse filled here (torch's CPU build), so
#                    the image build itself reaches no index.
#   --gpu            sst-serve:<version>-gpu on nvcr.io/nvidia/tritonserver:24.10-py3
#                    (needs that registry, or the image pulled beforehand, and the
#                    package index during the build).
#   --tag TAG        the image's name instead.
#
# Needs podman (and for --cpu mmdebstrap): deploy/container/install_podman.sh installs
# them. Cache: $SST_CONTAINER_CACHE, else ~/.cache/sst-serve/container (the base root
# filesystem and the wheelhouse; delete it to start afresh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
flavour=cpu
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) flavour=cpu ;;
    --gpu) flavour=gpu ;;
    --tag) [ $# -ge 2 ] || { echo "build.sh: --tag needs a value" >&2; exit 2; }; tag="$2"; shift ;;
    --tag=*) tag="${1#--tag=}" ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option '$1' (expected --cpu, --gpu or --tag TAG)" >&2; exit 2 ;;
  esac
  shift
done

for tool in podman; do
  command -v "$tool" >/dev/null || {
    echo "build.sh: $tool not found; run deploy/container/install_podman.sh" >&2; exit 2; }
done
python="${PYTHON:-python3}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n1)"
tag="${tag:-sst-serve:${version}-${flavour}}"
cache="${SST_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sst-serve/container}"
mkdir -p "$cache"
start=$(date +%s)
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/wheels"

# ---- this project's wheel (no source tree goes into the image)
echo "==> building the sst-serve $version wheel" >&2
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$context/wheels" "$root" >&2
wheel="$(ls "$context"/wheels/sst_serve-*.whl)"

if [ "$flavour" = cpu ]; then
  base=sst-serve-base:bookworm
  # ---- the base root filesystem: Debian's packages only, made once
  rootfs="$cache/bookworm-rootfs.tar"
  if [ ! -s "$rootfs" ]; then
    command -v mmdebstrap >/dev/null || {
      echo "build.sh: mmdebstrap not found; run deploy/container/install_podman.sh" >&2; exit 2; }
    echo "==> making the Debian 12 base root filesystem (once; cached in $rootfs)" >&2
    mmdebstrap --variant=minbase --format=tar --quiet \
      --include=python3,python3-venv,libpython3.11,ca-certificates,tini,libgomp1 \
      --aptopt='Acquire::Languages "none"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      bookworm "$rootfs.part" \
      "deb http://deb.debian.org/debian bookworm main" \
      "deb http://deb.debian.org/debian bookworm-updates main" \
      "deb http://deb.debian.org/debian-security bookworm-security main" >&2
    mv "$rootfs.part" "$rootfs"
    podman rmi --force "$base" >/dev/null 2>&1 || true
  fi
  if ! podman image exists "$base"; then
    echo "==> importing the base root filesystem as $base" >&2
    podman import --quiet "$rootfs" "$base" >/dev/null
  fi

  # ---- the wheelhouse: every dependency, torch's CPU build among them (cached)
  builder="$root/.venv/bin/python"
  if ! "$builder" -c 'import torch' 2>/dev/null; then
    builder="$cache/builder/bin/python"
    if ! "$builder" -c 'import torch' 2>/dev/null; then
      echo "==> a builder venv with torch's CPU build (once; for sam2's wheel)" >&2
      "$python" -m venv "$cache/builder"
      "$builder" -m pip install --quiet setuptools wheel >&2
      "$builder" -m pip install --quiet --retries 0 \
        --extra-index-url "${SST_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
        "torch==2.13.0" >&2
    fi
  fi
  wheelhouse="$cache/wheels-cpu"
  mkdir -p "$wheelhouse"
  rm -f "$wheelhouse"/sst_serve-*.whl
  echo "==> filling the wheelhouse $wheelhouse" >&2
  # sam2 is pure Python without its CUDA extension; built against the builder's torch.
  ls "$wheelhouse"/sam2-1.1.0-*.whl >/dev/null 2>&1 ||
    SAM2_BUILD_CUDA=0 "$builder" -m pip wheel --quiet --no-deps --no-build-isolation \
      --wheel-dir "$wheelhouse" "sam2==1.1.0" >&2
  "$builder" -m pip wheel --quiet --retries 0 --wheel-dir "$wheelhouse" \
    --extra-index-url "${SST_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
    "torch==2.13.0" setuptools wheel "${wheel}[export,server,ome-zarr]" >&2
  cp "$wheelhouse"/*.whl "$context/wheels/"
  build_args=(--build-arg "BASE=$base" --build-arg "EXTRAS=export,server,ome-zarr"
              --build-arg "PIP_INDEX_OPTION=--no-index")
else
  build_args=(--build-arg "BASE=nvcr.io/nvidia/tritonserver:24.10-py3"
              --build-arg "EXTRAS=export,server,ome-zarr,gpu")
fi

# The wheels are mounted into the build, not copied, so their digest keys the layer cache.
digest="$(cd "$context/wheels" && sha256sum -- *.whl | sha256sum | cut -c1-16)"
build_args+=(--build-arg "WHEELS_DIGEST=$digest")
echo "==> podman build $tag" >&2
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
podman build --quiet --network host --file "$here/Containerfile" "${build_args[@]}" \
  --tag "$tag" "$context" >&2
# The image this build replaced under the same name: removed, unless a container uses it.
current="$(podman image inspect --format '{{.Id}}' "$tag")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "==> built $tag in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB" >&2
echo "$tag"
