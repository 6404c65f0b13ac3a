#!/usr/bin/env bash
# vm-kernel-repo.sh — a local apt repository that offers the end-to-end
# guests (test/vm, `make e2e`) a newer kernel than the one their image has.
#
#   scripts/vm-kernel-repo.sh IMAGE_DIR    print the repository's directory
#
# IMAGE_DIR is a cache entry of scripts/vm-image.sh, whose guests boot
# bookworm's kernel. The repository holds Debian's own packages: trixie's
# linux-image-amd64 and every package it needs that the image lacks, resolved by apt against the image's
# own dpkg status (read from its disk with debugfs). It is a flat repository
# (Packages, Release with Origin "autopod-e2e"), which the test copies into
# a guest and lists there as
#   deb [trusted=yes] file:/srv/autopod-e2e-repo ./
# so that unattended-upgrades (Origins-Pattern "origin=autopod-e2e") and apt
# offer the kernel as an ordinary upgrade.
#
# The result is cached beside the image (IMAGE_DIR/kernel-repo) and reused
# for as long as the image is: the archive's kernel moves on, but any kernel
# newer than the image's serves the test. AUTOPOD_TEST_MIRROR overrides
# deb.debian.org; AUTOPOD_TEST_KERNEL_SUITE overrides trixie (the guest's
# CRIU must support that suite's kernel: CRIU 4.1.1 cannot restore a pod's
# mount namespace on trixie-backports' 7.3).
set -euo pipefail

MIRROR=${AUTOPOD_TEST_MIRROR:-http://deb.debian.org/debian}
SUITE=${AUTOPOD_TEST_KERNEL_SUITE:-trixie}
BASE=trixie
PACKAGE=linux-image-amd64
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'vm-kernel-repo: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -eq 1 ] || die "usage: $0 IMAGE_DIR (a cache entry printed by scripts/vm-image.sh)"
image=$(readlink -f "$1")
[ -f "$image/inputs" ] && [ -f "$image/disk.raw" ] || die "$1 is not a complete image entry (no inputs or disk.raw)"
for c in apt-get apt-ftparchive debugfs dpkg-deb; do
  command -v "$c" >/dev/null || die "$c not found (apt-get install apt apt-utils e2fsprogs dpkg)"
done
[ -r "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

repo=$image/kernel-repo
exec 9>"$image/.kernel-repo.lock"
flock 9
if [ -f "$repo/Release" ]; then
  log "cached: $repo ($(cat "$repo/kernel"))"
  printf '%s\n' "$repo"
  exit 0
fi

t0=$SECONDS
work=$(mktemp -d "$image/.kernel-repo-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/repo"
for s in $(printf '%s\n' "$BASE" "$SUITE" | sort -u); do
  printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$s"
done >"$work/sources.list"
# The guest's own package database, so that apt fetches exactly what the
# guest lacks.
debugfs -R "dump /var/lib/dpkg/status $work/status" "$image/disk.raw" >/dev/null 2>&1
[ -s "$work/status" ] || die "could not read /var/lib/dpkg/status from $image/disk.raw with debugfs"
apt=(apt-get -q
  -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
  -o Dir::State::Lists="$work/lists" -o Dir::State::status="$work/status"
  -o Dir::Cache="$work" -o Dir::Cache::Archives="$work/archives"
  -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Install-Recommends=false)
if ! "${apt[@]}" update >"$work/update.log" 2>&1; then
  cat "$work/update.log" >&2
  die "apt-get update from $MIRROR ($BASE, $SUITE) failed"
fi
if ! "${apt[@]}" -y -d -t "$SUITE" install "$PACKAGE" >"$work/install.log" 2>&1; then
  cat "$work/install.log" >&2
  die "apt-get could not fetch $PACKAGE from $SUITE with what it needs"
fi
mv "$work/archives/"*.deb "$work/repo/" 2>/dev/null || die "apt fetched nothing: $SUITE has no $PACKAGE newer than the image's"

# The kernel release the new packages install, and the image's.
new=$(for d in "$work/repo/"linux-image-[0-9]*.deb; do dpkg-deb -f "$d" Package; done | sed -n 's/^linux-image-\(.*\)$/\1/p' | sort -V | tail -n1)
old=$(sed -n 's/^kernel=//p' "$image/inputs")
[ -n "$new" ] || die "no linux-image-<release> package among the fetched ones"
[ "$(printf '%s\n%s\n' "$old" "$new" | sort -V | tail -n1)" = "$new" ] && [ "$new" != "$old" ] ||
  die "$SUITE's kernel $new is not newer than the image's $old"

(
  cd "$work/repo"
  apt-ftparchive packages . >Packages
  apt-ftparchive -o APT::FTPArchive::Release::Origin=autopod-e2e -o APT::FTPArchive::Release::Label=autopod-e2e \
    -o APT::FTPArchive::Release::Suite=autopod-e2e -o APT::FTPArchive::Release::Codename=autopod-e2e \
    release . >Release.tmp
  mv Release.tmp Release
)
printf '%s\n' "$new" >"$work/repo/kernel"
rm -rf "$repo"
mv "$work/repo" "$repo"
log "$(printf 'built %s in %ds: kernel %s (image has %s), %s of packages' "$repo" $((SECONDS - t0)) "$new" "$old" "$(du -sh "$repo" | cut -f1)")"
printf '%s\n' "$repo"
