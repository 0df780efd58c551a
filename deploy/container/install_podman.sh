#!/usr/bin/env bash
# Installs what building and running SST Serve's container images needs on a Debian
# machine: podman with the runc runtime, mmdebstrap (the CPU image's base root filesystem
# is made from Debian's packages, since no image registry may be reachable), and a
# containers.conf that works where raising rlimits is not permitted and where crun
# refuses the cgroup layout.
#
#   sudo deploy/container/install_podman.sh        (root: apt-get and /etc/containers)
#
# Idempotent: a second run installs nothing and leaves an existing config as it is
# unless it lacks the two settings, which it then adds in a drop-in file.
set -euo pipefail

packages=(podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install_podman.sh: needs root to install: ${missing[*]}" >&2
    exit 2
  fi
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A drop-in, so that a machine's own containers.conf is kept.
conf_dir=/etc/containers/containers.conf.d
conf="$conf_dir/50-sst-serve.conf"
if [ "$(id -u)" = 0 ] && [ ! -f "$conf" ]; then
  mkdir -p "$conf_dir"
  cat > "$conf" <<'CONF'
# Written by SST Serve's deploy/container/install_podman.sh.
[containers]
# Raising a container's rlimits above the caller's is not permitted on some hosts.
default_ulimits = []

[engine]
# crun refuses some hosts' hybrid cgroup layout; runc runs there.
runtime = "runc"
CONF
  echo "==> wrote $conf"
fi
echo "==> podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}')"
