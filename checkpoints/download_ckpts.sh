#!/usr/bin/env bash
# Fetch official SAM 2 / SAM 2.1 checkpoints into this folder (needs internet).
#
#   bash checkpoints/download_ckpts.sh                     # sam2.1_hiera_tiny (the default model)
#   bash checkpoints/download_ckpts.sh all                 # every SAM 2.1 and SAM 2.0 checkpoint
#   bash checkpoints/download_ckpts.sh sam2.1_hiera_large sam2_hiera_tiny
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sam21="https://dl.fbaipublicfiles.com/segment_anything_2/092824"
sam20="https://dl.fbaipublicfiles.com/segment_anything_2/072824"
all=(sam2.1_hiera_tiny sam2.1_hiera_small sam2.1_hiera_base_plus sam2.1_hiera_large
     sam2_hiera_tiny sam2_hiera_small sam2_hiera_base_plus sam2_hiera_large)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(sam2.1_hiera_tiny)
[ "${names[0]}" = "all" ] && names=("${all[@]}")
for name in "${names[@]}"; do
  case "$name" in
    sam2.1_hiera_*) url="$sam21/$name.pt" ;;
    sam2_hiera_*) url="$sam20/$name.pt" ;;
    *) echo "unknown model '$name' (expected one of: ${all[*]})" >&2; exit 2 ;;
  esac
  dest="$dir/$name.pt"
  if [ -s "$dest" ]; then echo "$dest already present"; continue; fi
  echo "fetching $url"
  if command -v curl >/dev/null; then
    curl -fL --retry 3 --connect-timeout 15 -o "$dest.part" "$url"
  else
    wget -O "$dest.part" "$url"
  fi || {
    rm -f "$dest.part"
    echo "could not download $url: no internet here? Copy $name.pt into $dir/ by hand," >&2
    echo "or run with --random-weights --seed N to check the pipeline offline." >&2
    exit 1
  }
  mv "$dest.part" "$dest"
done
