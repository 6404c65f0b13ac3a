#!/usr/bin/env bash
# deps.sh — install everything autopod's build, demo and tests need on a Debian 12 host.
#
# Idempotent: a second run checks and returns in seconds. Installs
#   * apt packages (build tools, redis, dbus, iproute2, nftables, systemd tools),
#   * a CRIU >= 4.1 that passes `criu check` on the running kernel: the distro's
#     when it works, else CRIU built from Debian's *source* package (trixie/sid)
#     with autopod's patches (scripts/criu-patches/), installed under
#     $CRIU_PREFIX (default /opt/autopod-criu),
#   * Go modules (go mod download).
# See ../shared/notes/criu-on-these-machines.md for why the build route exists.
set -euo pipefail

CRIU_PREFIX=${CRIU_PREFIX:-/opt/autopod-criu}
CRIU_MIN=40100
here=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'deps: %s\n' "$*" >&2; }

APT_PKGS=(
  build-essential pkgconf git ca-certificates patch
  iproute2 nftables iptables iputils-arping iputils-ping procps psmisc util-linux tar
  redis-server redis-tools
  dbus dbus-bin systemd systemd-container debhelper lintian rpm debootstrap
  apt-utils dnf dnf-plugins-core createrepo-c
  python3-protobuf libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev libaio-dev libgnutls28-dev
  uuid-dev
  # the end-to-end tier's guests (test/vm): qemu, ssh, the image's tools
  qemu-system-x86 openssh-client e2fsprogs dpkg-dev
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
apt_updated=
apt_update() {
  [ -n "$apt_updated" ] && return
  log "apt-get update"
  apt-get update -qq
  apt_updated=1
}
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v redis-server >/dev/null || { log "redis-server missing after install"; exit 1; }

criu_ok() { # $1 = binary
  local v
  [ -x "$1" ] || return 1
  v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p')
  [ -n "$v" ] || return 1
  IFS=. read -r a b c <<<"$v"
  [ $((a * 10000 + b * 100 + ${c:-0})) -ge $CRIU_MIN ] || return 1
  "$1" check >/dev/null 2>&1
}

# The build carries the patches in scripts/criu-patches (each says what it
# changes and why); the stamp records which, so that a build made before a
# patch changed is made again.
patches=("$here"/scripts/criu-patches/*.patch)
[ -e "${patches[0]}" ] || patches=()
patch_stamp=$(cat "${patches[@]}" </dev/null | sha256sum | cut -d' ' -f1)
stamp_file=$CRIU_PREFIX/autopod-patches.sha256 # which patches the build tried
applied_file=$CRIU_PREFIX/autopod-patches       # which of them it carries
bundled_current() {
  [ -L "$CRIU_PREFIX/sbin/criu" ] && return 0 # the distro's, linked: no build to redo
  [ "$(cat "$stamp_file" 2>/dev/null)" = "$patch_stamp" ]
}

if criu_ok "$CRIU_PREFIX/sbin/criu" && bundled_current; then
  log "CRIU ok: $("$CRIU_PREFIX/sbin/criu" --version | head -1) at $CRIU_PREFIX/sbin/criu"
elif [ ! -e "$CRIU_PREFIX/sbin/criu" ] && criu_ok /usr/sbin/criu; then
  log "distro CRIU works on this kernel; linking it"
  mkdir -p "$CRIU_PREFIX/sbin"
  ln -sf /usr/sbin/criu "$CRIU_PREFIX/sbin/criu"
else
  # Build from Debian's source package. Source entries for trixie and sid, with an apt pin
  # of -1 for both suites so that no binary package from them can ever be installed.
  src=/etc/apt/sources.list.d/autopod-deb-src.sources
  if [ ! -f "$src" ]; then
    log "adding deb-src entries for trixie/sid (binary packages pinned out)"
    cat >"$src" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat >/etc/apt/preferences.d/autopod-no-trixie-sid <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: -1

Package: *
Pin: release n=sid
Pin-Priority: -1
PIN
    apt_updated=
  fi
  apt_update
  work=$(mktemp -d /tmp/autopod-criu-build.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  built=
  # Newest first: whatever sid and trixie carry.
  for ver in $(apt-cache showsrc criu 2>/dev/null | sed -n 's/^Version: //p' | sort -rV | uniq); do
    log "fetching criu $ver source"
    if apt-get source -qq --tar-only "criu=$ver" >/dev/null 2>&1; then
      tarball=$(ls criu_*.orig.tar.* | head -1)
      tar xf "$tarball"
      dir=$(find . -maxdepth 1 -type d -name 'criu-*' | head -1)
      : >"$work/applied"
      for p in "${patches[@]}"; do
        # A dry run first: a patch that does not apply whole is not applied at all.
        if patch -d "$dir" -p1 --forward --quiet --dry-run <"$p" >>"$work/patch.log" 2>&1 &&
          patch -d "$dir" -p1 --forward --quiet <"$p" >>"$work/patch.log" 2>&1; then
          log "applied $(basename "$p")"
          basename "$p" >>"$work/applied"
        else
          # Each patch is an improvement, not a fix CRIU needs: build without it.
          log "$(basename "$p") does not apply to criu $ver; building without it:"
          tail -5 "$work/patch.log" >&2
        fi
      done
      log "building $dir (a few minutes)"
      if make -C "$dir" -j"$(nproc)" PYTHON=/usr/bin/python3 >"$work/build.log" 2>&1 &&
        make -C "$dir" PYTHON=/usr/bin/python3 PREFIX="$CRIU_PREFIX" SKIP_PIP_INSTALL=1 \
          install-criu install-lib install-compel >>"$work/build.log" 2>&1; then
        built=$ver
        break
      fi
      log "build of criu $ver failed; last lines:"
      tail -20 "$work/build.log" >&2
    fi
  done
  [ -n "$built" ] || { log "could not obtain a working CRIU"; exit 1; }
  criu_ok "$CRIU_PREFIX/sbin/criu" || {
    log "built CRIU $built but 'criu check' fails:"
    "$CRIU_PREFIX/sbin/criu" check >&2 || true
    exit 1
  }
  cp "$work/applied" "$applied_file"
  echo "$patch_stamp" >"$stamp_file"
  log "CRIU $built installed at $CRIU_PREFIX/sbin/criu"
fi

# Post-copy needs large pipes (see notes); harmless elsewhere.
cur=$(cat /proc/sys/fs/pipe-max-size)
[ "$cur" -ge 4194304 ] || echo 4194304 >/proc/sys/fs/pipe-max-size || true

# Go: these machines carry it in /usr/local/go; Debian 12's golang-go (1.19)
# is too old for go.mod, so say so instead of failing later in the build.
export PATH=$PATH:/usr/local/go/bin
want=$(sed -n 's/^go //p' "$here/go.mod")
if ! command -v go >/dev/null; then
  log "Go $want or newer is needed (not found on PATH or in /usr/local/go)"
  exit 1
fi
have=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" != "$want" ]; then
  log "Go $have is older than the $want that go.mod needs"
  exit 1
fi
(cd "$here" && go mod download)
log "done"
