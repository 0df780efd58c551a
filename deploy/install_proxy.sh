#!/usr/bin/env bash
# Installs the session-affine gRPC proxy from the OS packages when it is missing.
#
#   bash deploy/install_proxy.sh [nginx|haproxy]     (default: nginx)
#
# Exit status: 0 when the proxy's binary is on PATH afterwards, 2 when it is missing and
# cannot be installed here (no apt-get, or not root), 1 when apt-get failed.
set -euo pipefail

proxy="${1:-nginx}"
case "$proxy" in
  nginx) package=nginx binary=nginx ;;
  haproxy) package=haproxy binary=haproxy ;;
  *) echo "install_proxy.sh: unknown proxy '$proxy' (expected nginx or haproxy)" >&2; exit 2 ;;
esac

PATH="$PATH:/usr/sbin:/sbin"
if command -v "$binary" >/dev/null 2>&1; then
  echo "$binary: $(command -v "$binary")"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_proxy.sh: $binary is missing and there is no apt-get to install $package" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_proxy.sh: $binary is missing; installing $package needs root (apt-get)" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
# the package lists first (a fresh image has none), then the package alone
apt-get update -q
apt-get install -y -q --no-install-recommends "$package"
# Debian's package starts the service where an init system runs: the tests and benchmarks
# start their own proxy on their own ports, so a packaged one is not wanted
if command -v service >/dev/null 2>&1; then service "$binary" stop >/dev/null 2>&1 || true; fi
command -v "$binary" >/dev/null 2>&1 || { echo "install_proxy.sh: $binary not found after installing $package" >&2; exit 1; }
echo "$binary: $(command -v "$binary")"
