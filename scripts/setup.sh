#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks and prints the path of a ready virtualenv.
#   root:      apt packages (postgresql-15, etcd-server, prometheus, python3-venv; nftables and iputils-ping
#              for the chaos test bed in network namespaces; containerd, runc, CNI plugins, podman,
#              debootstrap, conntrack, iptables for `pgquorum kube`), venv under /opt/pgquorum-cache
#   non-root:  checks the packages, venv under ~/.cache/pgquorum
# The venv is built from /usr/bin/python3 outside /root, so the unprivileged 'postgres' user that
# runs PostgreSQL (which refuses root) can execute it. Reused while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

if [ "$(id -u)" = 0 ]; then
  CACHE=${PGQUORUM_CACHE:-/opt/pgquorum-cache}
  missing=()
  # the second line: the local Kubernetes (`pgquorum kube`, the kube tests) and its image builds;
  # podman's recommends (buildah, fuse-overlayfs, slirp4netns, uidmap) are named because we install
  # without recommends and these are what podman builds with here.
  for pkg in postgresql-15 etcd-server prometheus python3-venv nftables iputils-ping \
    containerd runc containernetworking-plugins podman buildah fuse-overlayfs slirp4netns uidmap \
    debootstrap busybox-static conntrack iptables openssl util-linux iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # Go builds the chaos linearizability checker (porcupine); any go >= 1.18 will do
  command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || [ -x /usr/lib/go/bin/go ] || missing+=(golang-go)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  # Debian starts a system-wide etcd/postgres on install where an init system runs; we use our own.
  # Same for containerd: every node of `pgquorum kube` runs its own, on its own socket.
  for unit in etcd containerd; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
      systemctl stop "$unit" >&2 || true
    fi
  done
else
  CACHE=${PGQUORUM_CACHE:-$HOME/.cache/pgquorum}
  for bin in /usr/lib/postgresql/15/bin/postgres /usr/bin/etcd /usr/bin/prometheus; do
    [ -x "$bin" ] || { log "missing $bin: sudo apt-get install postgresql-15 etcd-server prometheus python3-venv"; exit 1; }
  done
fi

PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
key=$( (cat pyproject.toml; $PY --version) | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$key"
if [ ! -x "$VENV/bin/pgquorum" ] || [ ! -f "$VENV/.complete" ]; then
  log "creating $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  $PY -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel >&2
  "$VENV/bin/pip" install -q ".[test]" >&2
  touch "$VENV/.complete"
fi
# The project itself is reinstalled each time (seconds): a copy in site-packages, readable by the
# postgres user wherever this checkout lives.
"$VENV/bin/pip" install -q --no-deps --no-build-isolation --force-reinstall . >&2
# The chaos linearizability checker (chaos/linearize, Go + porcupine from the Go module proxy of the
# environment): built once per content of its sources, linked into the venv for installed copies.
GO=$(command -v go || true)
for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do if [ -z "$GO" ] && [ -x "$g" ]; then GO=$g; fi; done
if [ -n "$GO" ]; then
  LIN="$CACHE/linearize-$(cat chaos/linearize/{main.go,go.mod,go.sum} | sha256sum | cut -c1-12)/linearize"
  if [ ! -x "$LIN" ]; then
    log "building the linearizability checker into $LIN"
    mkdir -p "$(dirname "$LIN")"
    if (cd chaos/linearize && GOFLAGS="-mod=mod ${GOFLAGS:-}" "$GO" build -buildvcs=false -o "$LIN.tmp" . >&2); then
      mv "$LIN.tmp" "$LIN"
    else
      log "building the linearizability checker failed: chaos runs will report the register history unchecked"
    fi
  fi
  if [ -x "$LIN" ]; then ln -sf "$LIN" "$VENV/bin/pgquorum-linearize"; fi
else
  log "go not found: chaos runs will report the register history unchecked (install Go >= 1.18)"
fi
chmod -R o+rX "$CACHE" 2>/dev/null || true
echo "$VENV"
