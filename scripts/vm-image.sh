#!/usr/bin/env bash
# vm-image.sh — build (or find in the cache) the Debian guest image that the
# end-to-end tier (test/vm, `make e2e`) boots under qemu.
#
#   scripts/vm-image.sh            print the cache entry's directory on stdout
#
# The entry, /var/cache/autopod-test/vm/<suite>-<hash>/ (AUTOPOD_TEST_CACHE
# overrides /var/cache/autopod-test), holds
#   disk.raw                 sparse raw ext4 image of the guest's root (/dev/vda)
#   vmlinuz, initrd.img      the image's kernel and initramfs, for direct boot
#   id_ed25519{,.pub}        the test driver's key: root logs in with it
#   inputs                   what the hash was made from (written last: an
#                            entry without it is incomplete and rebuilt)
# The hash covers this script and everything it reads (suite, packages,
# mirror, debootstrap's version), so editing the recipe makes a new entry;
# building one removes the older entries of the same suite. Nothing else
# outside the entry and a temporary directory under it is written; the
# guests never modify disk.raw (they get sparse copies).
#
# What is in the guest (see ../shared/notes/vm-testbed.md): trixie minbase
# with systemd as PID 1, D-Bus, logind, bookworm's kernel (the update the
# tests offer is trixie's), CRIU, redis,
# unattended-upgrades and ssh. Two units are ours:
#   autopod-e2e-net.service    configures the NICs from the kernel command
#                              line (autopod.e2e.net=MAC=ADDR/LEN[,...],
#                              autopod.e2e.bridge=BRIDGE=MAC=ADDR/LEN and
#                              autopod.e2e.gw=ADDR), so one image serves every
#                              guest and the configuration survives reboots;
#   autopod-e2e-booted.service prints "BOOTED $(uname -r)" on ttyS0 once
#                              multi-user.target is reached.
# Needs root (debootstrap, chroot, file ownership in the image) and the
# Debian archive (AUTOPOD_TEST_MIRROR overrides deb.debian.org).
set -euo pipefail

SUITE=trixie
# The guest boots the previous stable release's kernel, so that its own
# release's kernel (scripts/vm-kernel-repo.sh) is a real update: a newer
# series that the guest's CRIU supports. trixie-backports' 7.x kernels were
# tried first; CRIU 4.1.1 cannot restore a pod's mount namespace on them.
KERNEL_SUITE=bookworm
MIRROR=${AUTOPOD_TEST_MIRROR:-http://deb.debian.org/debian}
CACHE=${AUTOPOD_TEST_CACHE:-/var/cache/autopod-test}/vm
IMAGE_SIZE=4G # sparse; room for a kernel update (~125 MB of .debs, unpacked twice that)
PACKAGES=(
  systemd systemd-sysv dbus libpam-systemd udev
  initramfs-tools zstd kmod
  criu redis-server unattended-upgrades openssh-server
  iproute2 nftables iputils-arping iputils-ping netcat-openbsd procps e2fsprogs
)
# The initramfs only needs to find an ext4 root on virtio-blk. MODULES=list
# rather than dep: dep inspects the root device of the machine that builds
# the image (we build in a chroot on the host), not the guest's.
INITRAMFS_MODULES=(virtio_pci virtio_blk virtio_net ext4 crc32c_generic)

log() { printf 'vm-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
t0=$SECONDS
phase_start=$SECONDS
phase() { # name: print how long the previous phase took
  log "$(printf '%-28s %4ds' "$1" $((SECONDS - phase_start)))"
  phase_start=$SECONDS
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, and root-owned files in the image)"
for c in debootstrap mkfs.ext4 ssh-keygen sha256sum dpkg-query; do
  command -v "$c" >/dev/null || die "$c not found (apt-get install debootstrap e2fsprogs openssh-client)"
done

self=$(readlink -f "$0")
inputs=$(
  printf 'script-sha256=%s\n' "$(sha256sum "$self" | cut -d' ' -f1)"
  printf 'suite=%s\nkernel-suite=%s\nmirror=%s\nsize=%s\n' "$SUITE" "$KERNEL_SUITE" "$MIRROR" "$IMAGE_SIZE"
  printf 'packages=%s\n' "${PACKAGES[*]}"
  printf 'initramfs-modules=%s\n' "${INITRAMFS_MODULES[*]}"
  printf 'debootstrap=%s\n' "$(dpkg-query -W -f='${Version}' debootstrap)"
  printf 'arch=%s\n' "$(dpkg --print-architecture)"
)
hash=$(printf '%s\n' "$inputs" | sha256sum | cut -c1-12)
entry=$CACHE/$SUITE-$hash

mkdir -p "$CACHE"
# One builder at a time; a second caller waits and then finds the entry.
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$entry/inputs" ]; then
  log "cached: $entry"
  printf '%s\n' "$entry"
  exit 0
fi

log "building $entry (cache miss; about 2-3 minutes)"
work=$(mktemp -d "$CACHE/.build-XXXXXX")
root=$work/rootfs
cleanup() {
  # debootstrap's second stage mounts /proc and /sys in the root and unmounts
  # them itself; make sure nothing stays mounted if it died half-way.
  for m in "$root/proc" "$root/sys" "$root/dev/pts" "$root/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --foreign then --second-stage: the initramfs configuration must be in place
# before the kernel's postinst builds the initramfs, or it is built twice.
include=$(IFS=,; echo "${PACKAGES[*]}")
if ! debootstrap --foreign --variant=minbase --include="$include" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap (first stage) of $SUITE from $MIRROR failed; full log above (last lines)"
fi
phase "debootstrap download+unpack"

mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nRESUME=none\nCOMPRESS=zstd\n' >"$root/etc/initramfs-tools/conf.d/autopod-e2e"
printf '%s\n' "${INITRAMFS_MODULES[@]}" >>"$root/etc/initramfs-tools/modules"
if ! chroot "$root" /debootstrap/debootstrap --second-stage >"$work/second-stage.log" 2>&1; then
  tail -n 30 "$work/second-stage.log" >&2
  die "debootstrap --second-stage failed (last lines above)"
fi
phase "debootstrap configure"

# The kernel: $KERNEL_SUITE's linux-image-amd64, fetched on this host by apt
# (resolved against the guest's package database) and installed with dpkg.
kapt=(apt-get -q
  -o Dir::Etc::SourceList="$work/kernel.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
  -o Dir::State::Lists="$work/klists" -o Dir::State::status="$root/var/lib/dpkg/status"
  -o Dir::Cache="$work" -o Dir::Cache::Archives="$work/kdebs"
  -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Install-Recommends=false)
mkdir -p "$work/klists/partial" "$work/kdebs/partial"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' "$MIRROR" "$KERNEL_SUITE" >"$work/kernel.list"
if ! { "${kapt[@]}" update && "${kapt[@]}" -y -d install linux-image-amd64; } >"$work/kernel.log" 2>&1; then
  tail -n 30 "$work/kernel.log" >&2
  die "could not fetch $KERNEL_SUITE's linux-image-amd64"
fi
mkdir -p "$root/tmp/kernel"
cp "$work/kdebs/"*.deb "$root/tmp/kernel/"
mount -t proc proc "$root/proc"
if ! chroot "$root" sh -c 'dpkg -i /tmp/kernel/*.deb' >"$work/kernel-install.log" 2>&1; then
  umount "$root/proc"
  tail -n 30 "$work/kernel-install.log" >&2
  die "dpkg -i of $KERNEL_SUITE's kernel in the image failed"
fi
umount "$root/proc"
rm -rf "$root/tmp/kernel"
phase "kernel ($KERNEL_SUITE)"

# --- guest configuration --------------------------------------------------
echo autopod-e2e >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 autopod-e2e\n' >"$root/etc/hosts"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"
chroot "$root" passwd -d root >/dev/null # console login on ttyS0 for debugging

ssh-keygen -q -t ed25519 -N '' -C autopod-e2e -f "$work/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
# The first login under TCG is slow enough without reverse DNS.
printf 'UseDNS no\nPermitRootLogin prohibit-password\n' >"$root/etc/ssh/sshd_config.d/autopod-e2e.conf"

cat >"$root/usr/local/sbin/autopod-e2e-net" <<'EOF'
#!/bin/sh
# Configure NICs from the kernel command line:
#   autopod.e2e.net=MAC=ADDR/LEN[,MAC=ADDR/LEN...]  autopod.e2e.gw=ADDR
#   autopod.e2e.bridge=BRIDGE=MAC=ADDR/LEN: a bridge (autopod's pod bridge)
#     that carries the NIC with MAC and holds ADDR, so that pods are on the
#     NIC's segment; the bridge takes the NIC's MAC, as autopod keeps it.
set -eu
nic() { # MAC: print the interface's name
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address")" = "$1" ] && { echo "${d##*/}"; return 0; }
  done
  echo "autopod-e2e-net: no NIC with MAC $1" >&2
  return 1
}
ip link set lo up
for arg in $(cat /proc/cmdline); do
  case $arg in
  autopod.e2e.net=*)
    for pair in $(echo "${arg#autopod.e2e.net=}" | tr , ' '); do
      mac=${pair%%=*} addr=${pair#*=}
      dev=$(nic "$mac")
      ip addr replace "$addr" dev "$dev"
      ip link set "$dev" up
    done ;;
  autopod.e2e.bridge=*)
    spec=${arg#autopod.e2e.bridge=}
    br=${spec%%=*} rest=${spec#*=}
    mac=${rest%=*} addr=${rest##*=}
    dev=$(nic "$mac")
    ip link show "$br" >/dev/null 2>&1 || ip link add "$br" type bridge
    ip link set dev "$br" address "$mac"
    ip link set "$dev" master "$br"
    ip link set "$dev" up
    ip addr replace "$addr" dev "$br"
    ip link set "$br" up ;;
  autopod.e2e.gw=*) gw=${arg#autopod.e2e.gw=} ;;
  esac
done
[ -z "${gw:-}" ] || ip route replace default via "$gw"
EOF
chmod 0755 "$root/usr/local/sbin/autopod-e2e-net"
cat >"$root/etc/systemd/system/autopod-e2e-net.service" <<'EOF'
[Unit]
Description=autopod e2e: addresses from the kernel command line
DefaultDependencies=no
After=systemd-udevd.service
Wants=network.target
Before=network.target network-online.target ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
# udev may not have seen every NIC yet; try for a while.
ExecStart=/bin/sh -c 'for i in $(seq 50); do /usr/local/sbin/autopod-e2e-net && exit 0; sleep 0.2; done; exit 1'

[Install]
WantedBy=multi-user.target
EOF
cat >"$root/etc/systemd/system/autopod-e2e-booted.service" <<'EOF'
[Unit]
Description=autopod e2e: tell the test driver on ttyS0 that the guest is up
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "BOOTED $(uname -r)" >/dev/ttyS0'

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable autopod-e2e-net.service autopod-e2e-booted.service >/dev/null 2>&1 ||
  die "systemctl enable of the e2e units in the image failed"
# Nothing in the guest may try to reach the archive on its own (its network
# has no way out anyway); the test drives apt and unattended-upgrades itself.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
# No hardware clock worth syncing, and fewer units means a faster TCG boot.
chroot "$root" systemctl mask systemd-timesyncd.service >/dev/null 2>&1 || true
# redis runs in autopod's pods, not as the distribution's service.
chroot "$root" systemctl disable redis-server.service >/dev/null 2>&1 || true

kver=$(ls "$root/lib/modules" | sort -V | tail -n1)
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] ||
  die "no kernel/initramfs in the image's /boot (linux-image-amd64 not installed?)"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
rm -rf "$root/var/cache/apt/"*.bin "$root/var/cache/apt/archives/"*.deb "$root/debootstrap"
# No package lists: the guests cannot reach the archive, and debootstrap's
# trixie lists would offer trixie's kernel to bookworm's at once, on every
# guest. The tests give a guest the lists they want it to see.
rm -rf "$root/var/lib/apt/lists/"*
mkdir -p "$root/var/lib/apt/lists/partial"
phase "configure guest"

truncate -s "$IMAGE_SIZE" "$work/disk.raw"
if ! mkfs.ext4 -q -F -L autopod-e2e -d "$root" "$work/disk.raw" >"$work/mkfs.log" 2>&1; then
  cat "$work/mkfs.log" >&2
  die "mkfs.ext4 -d failed"
fi
phase "mkfs.ext4 -d"

mkdir -p "$entry.new"
mv "$work/disk.raw" "$work/vmlinuz" "$work/initrd.img" "$work/id_ed25519" "$work/id_ed25519.pub" "$entry.new/"
printf '%s\nkernel=%s\n' "$inputs" "$kver" >"$entry.new/inputs"
rm -rf "$entry"
mv "$entry.new" "$entry"
# Older entries (other recipes) are of no more use: each holds a disk image.
for old in "$CACHE/$SUITE"-*; do
  [ "$old" = "$entry" ] || [ ! -f "$old/inputs" ] || { log "removing the old entry $old"; rm -rf "$old"; }
done
log "$(printf '%-28s %4ds  (%s used of %s, kernel %s)' total $((SECONDS - t0)) \
  "$(du -h "$entry/disk.raw" | cut -f1)" "$IMAGE_SIZE" "$kver")"
printf '%s\n' "$entry"
