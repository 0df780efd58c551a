#!/usr/bin/env bash
# Installs the headless browser the review-page test drives: Debian's `chromium` and its
# WebDriver `chromium-driver`. Prints the reason and exits 3 where it cannot (no apt-get,
# not root, no such package); exits 0 once both are on PATH.
set -uo pipefail

have() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

if have; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and this system has no apt-get to install it" >&2
  exit 3
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is not installed and installing it needs root (apt-get install -y chromium chromium-driver)" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq; then
  echo "apt-get update failed: cannot install chromium" >&2
  exit 3
fi
if ! apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
  echo "apt-get install chromium chromium-driver failed (no such package on this system?)" >&2
  exit 3
fi
if ! have; then
  echo "chromium and chromium-driver were installed but are not on PATH" >&2
  exit 3
fi
