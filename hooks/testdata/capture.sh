#!/usr/bin/env bash
# capture.sh — regenerate the captured hook inputs in this directory.
#
# Every *.stdin here is what a real apt or dnf wrote on the stdin of autopod's hook
# command, on a Debian 12 host (apt 2.6, dpkg 1.21, dnf 4.14, rpm 4.18), with the
# hooks configured by the files autopod ships (packaging/etc/apt/apt.conf.d/99autopod,
# the dnf plugin packaging/usr/lib/python3/dist-packages/dnf-plugins/autopod.py);
# only the path of autopodctl is replaced by recorder.sh, which keeps what it was
# given. NAME.out / NAME.err / NAME.rc triples are what apt or dnf itself printed and
# its exit code, and *.status are dpkg status files. The parsers' tests read them;
# nothing is hand-written.
#
# The host's own package state is never changed (the approach of
# updater/testdata/capture.sh):
#   apt  dummy .debs built with dpkg-deb, a flat repository indexed by apt-ftparchive,
#        a dpkg root and database of their own (dpkg --root), and an apt configuration
#        that apt reads instead of /etc/apt (APT_CONFIG, with Dir::Etc::parts pointing
#        at a private apt.conf.d that holds 99autopod). Maintainer scripts run
#        chrooted into the private root, which has no shell: a package with a
#        postinst fails to configure, which is how the dpkg-failure captures are made.
#   dnf  dummy RPMs built with rpmbuild, a repository made by createrepo_c, and
#        dnf --installroot with a private dnf.conf (reposdir=/dev/null, its own
#        cachedir) whose pluginpath is packaging/'s dnf-plugins directory and whose
#        pluginconfpath holds autopod.conf pointing at the recorder. pluginpath
#        replaces dnf's default, so none of the host's plugins is loaded.
#        PYTHONDONTWRITEBYTECODE keeps __pycache__ out of packaging/.
#
# Usage: hooks/testdata/capture.sh [apt] [dnf]   (default: both)
# OUT=DIR writes the captures there instead of here; KEEP=1 keeps the temp dir.
# Needs root (dpkg --root, dnf --installroot) and:
#   apt-get install -y dpkg-dev apt-utils rpm dnf createrepo-c
set -euo pipefail
export LC_ALL=C TZ=UTC PYTHONDONTWRITEBYTECODE=1

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=${OUT:-$here}
recorder=$here/recorder.sh
work=$(mktemp -d /tmp/autopod-hooks-capture.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
log() { printf 'capture: %s\n' "$*" >&2; }

# Temp paths differ on every run; make them stable so that a re-capture diffs cleanly.
stable() { sed -i -e "s|$recorder|/usr/bin/autopodctl|g" -e "s|$work|/tmp/capture|g" -e "s|${work//\//%2f}|%2ftmp%2fcapture|g" "$@"; }

# cap NAME CMD... runs CMD and keeps NAME.out, NAME.err and NAME.rc.
cap() {
  local name=$1
  shift
  local rc=0
  "$@" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
  echo "$rc" >"$out/$name.rc"
  stable "$out/$name.out" "$out/$name.err"
  log "$name: exit $rc"
}

# hookrun NAME SUBCOMMAND CMD... runs CMD (apt-get or dnf) with a fresh recorder
# directory and keeps, as NAME.stdin, what the hook SUBCOMMAND was given on stdin
# (the first such call). CMD must succeed.
export RECORD_DIR=$work/rec
hookrun() {
  local name=$1 sub=$2
  shift 2
  rm -rf "$RECORD_DIR" && mkdir -p "$RECORD_DIR"
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; log "$name: $* failed"; return 1; }
  local f
  for f in "$RECORD_DIR"/*.args; do
    if [ "$(sed -n 2p "$f")" = "$sub" ]; then
      cp "${f%.args}.stdin" "$out/$name.stdin"
      stable "$out/$name.stdin"
      log "$name: $(wc -l <"$out/$name.stdin") lines from $sub"
      return 0
    fi
  done
  log "$name: the hook $sub was not called"
  return 1
}

# ---------------------------------------------------------------------------
# apt
# mkdeb NAME VERSION ARCH [CONTROL-LINE...] builds a package holding one file; a
# control line "postinst" gives it a postinst (which fails here: see above).
mkdeb() {
  local name=$1 version=$2 arch=$3
  shift 3
  local d=$work/debsrc/${name}_${version}_$arch
  mkdir -p "$d/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: autopod tests <tests@autopod.invalid>"
    echo "Description: autopod test dummy"
    local l
    for l in "$@"; do [ "$l" = postinst ] || echo "$l"; done
  } >"$d/DEBIAN/control"
  case $name in
  linux-image-[0-9]*)
    mkdir -p "$d/boot"
    echo "dummy kernel $name $version" >"$d/boot/vmlinuz-${name#linux-image-}"
    ;;
  *)
    # Multi-Arch: same packages share paths only if the file is identical.
    mkdir -p "$d/usr/share/doc/$name"
    echo "$name $version" >"$d/usr/share/doc/$name/dummy-$arch"
    ;;
  esac
  if [[ " $* " == *" postinst "* ]]; then
    printf '#!/bin/sh\nexit 0\n' >"$d/DEBIAN/postinst"
    chmod 0755 "$d/DEBIAN/postinst"
  fi
  dpkg-deb --root-owner-group -Zgzip --build "$d" "$work/debs/${name}_${version}_$arch.deb" >/dev/null
}

capture_apt() {
  log "apt: building the private universe in $work"
  local root=$work/root etc=$work/apt/etc repo=$work/repo
  mkdir -p "$work/debs" "$repo" "$root/var/lib/dpkg/"{info,updates,triggers} \
    "$etc/apt.conf.d" "$etc/sources.list.d" "$etc/preferences.d" \
    "$work/apt/state/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/log"
  touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
  [ -f /etc/apt/apt.conf.d/01autoremove ] && cp /etc/apt/apt.conf.d/01autoremove "$etc/apt.conf.d/"
  cat >"$work/apt.conf" <<EOF
Dir::Etc::main "$etc/apt.conf";
Dir::Etc::parts "$etc/apt.conf.d";
Dir::Etc::sourcelist "$etc/sources.list";
Dir::Etc::sourceparts "$etc/sources.list.d";
Dir::Etc::preferences "$etc/preferences";
Dir::Etc::preferencesparts "$etc/preferences.d";
Dir::State "$work/apt/state";
Dir::State::status "$root/var/lib/dpkg/status";
Dir::Cache "$work/apt/cache";
Dir::Log "$work/apt/log";
Debug::NoLocking "1";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; "i386"; };
DPkg::Options { "--root=$root"; "--admindir=$root/var/lib/dpkg"; "--force-not-root"; "--force-bad-path"; };
EOF
  export APT_CONFIG=$work/apt.conf
  echo "deb [trusted=yes] file:$repo ./" >"$etc/sources.list"
  local dpkg=(dpkg --root="$root" --admindir="$root/var/lib/dpkg" --force-not-root --force-bad-path)
  "${dpkg[@]}" --add-architecture i386

  # Installed at first: a kernel ABI with its metapackage, an ordinary package
  # (Architecture: all), one with an epoch, a Multi-Arch: same library for amd64 and
  # i386, and one that the upgrade removes.
  mkdeb linux-image-6.99.0-1-amd64 6.99.1-1 amd64
  mkdeb linux-image-amd64 6.99.1-1 amd64 "Depends: linux-image-6.99.0-1-amd64"
  mkdeb hello 1.0-1 all
  mkdeb login 1:4.13+dfsg1-1 amd64
  mkdeb libdummy1 1.0-1 amd64 "Multi-Arch: same"
  mkdeb libdummy1 1.0-1 i386 "Multi-Arch: same"
  mkdeb oldtool 1.0-1 amd64
  "${dpkg[@]}" -i "$work"/debs/*.deb >/dev/null
  cp "$work"/debs/*.deb "$repo/"

  # The repository adds a new kernel ABI (pulled in by the metapackage), new versions
  # of the rest, hello 2.0 conflicting with oldtool (the upgrade removes oldtool), a
  # package that is new, and one whose postinst fails.
  rm -rf "$work/debs" && mkdir -p "$work/debs"
  mkdeb linux-image-6.99.0-2-amd64 6.99.2-1 amd64
  mkdeb linux-image-amd64 6.99.2-1 amd64 "Depends: linux-image-6.99.0-2-amd64"
  mkdeb hello 2.0-1 all "Conflicts: oldtool"
  mkdeb login 1:4.13+dfsg1-1+deb12u1 amd64
  mkdeb libdummy1 1.1-1 amd64 "Multi-Arch: same"
  mkdeb libdummy1 1.1-1 i386 "Multi-Arch: same"
  mkdeb newpkg 1.0-1 amd64
  mkdeb failing 1.0-1 amd64 postinst
  cp "$work"/debs/*.deb "$repo/"
  (cd "$repo" && apt-ftparchive packages . >Packages)
  apt-get -q update >/dev/null

  # The hooks exactly as autopod ships them, with the recorder for autopodctl.
  sed "s|/usr/bin/autopodctl|$recorder|g" "$top/packaging/etc/apt/apt.conf.d/99autopod" >"$etc/apt.conf.d/99autopod"
  local version=$etc/apt.conf.d/99zz-version
  cp -a "$root" "$work/root-before"
  reset_root() { rm -rf "$root" && cp -a "$work/root-before" "$root"; }

  # The same upgrade in each protocol version: a new kernel ABI (install), upgrades
  # (the metapackage, an epoch, a Multi-Arch: same pair), a removal (oldtool, for
  # hello's Conflicts), and a configuration value that needs %-encoding.
  local v
  for v in 1 2; do
    echo "DPkg::Tools::Options::$recorder::Version \"$v\";" >"$version"
    hookrun "apt/v$v-dist-upgrade" apt-pre-install apt-get -y -o 'Autopod::Test=a=b %c "d"' dist-upgrade
    reset_root
  done
  rm -f "$version"
  hookrun apt/v3-dist-upgrade apt-pre-install apt-get -y -o 'Autopod::Test=a=b %c "d"' dist-upgrade
  cp "$root/var/lib/dpkg/status" "$out/apt/dpkg-installed.status"

  # One action each: a new package; a reinstall; a downgrade; a removal; a purge.
  hookrun apt/v3-install apt-pre-install apt-get -y install newpkg
  hookrun apt/v3-reinstall apt-pre-install apt-get -y install --reinstall hello
  hookrun apt/v3-downgrade apt-pre-install apt-get -y install --allow-downgrades hello=1.0-1
  hookrun apt/v3-remove apt-pre-install apt-get -y remove hello
  hookrun apt/v3-purge apt-pre-install apt-get -y purge newpkg

  # dpkg fails: failing's postinst cannot run. apt still runs DPkg::Post-Invoke.
  cap apt/dpkg-fails apt-get -y install failing
  cp "$root/var/lib/dpkg/status" "$out/apt/dpkg-failed.status"
  # Only configuring is left (apt-get -f install): no .deb is unpacked.
  rm -rf "$RECORD_DIR" && mkdir -p "$RECORD_DIR"
  apt-get -y -f install >/dev/null 2>&1 || true
  cp "$RECORD_DIR/001.stdin" "$out/apt/v3-configure.stdin" && stable "$out/apt/v3-configure.stdin"
  "${dpkg[@]}" --remove failing >/dev/null 2>&1 || true

  # The hook refuses: apt stops before dpkg runs and shows the hook's message.
  reset_root
  rm -rf "$RECORD_DIR" && mkdir -p "$RECORD_DIR"
  RECORD_FAIL=apt-pre-install RECORD_MESSAGE="autopod: refusing (recorder)" \
    cap apt/refused apt-get -y install linux-image-6.99.0-2-amd64
  # autopodctl is not installed (autopod removed, 99autopod kept): apt goes on.
  sed "s|/usr/bin/autopodctl|$work/no-such-autopodctl|g" "$top/packaging/etc/apt/apt.conf.d/99autopod" >"$etc/apt.conf.d/99autopod"
  cap apt/missing apt-get -y install newpkg
  unset APT_CONFIG
}

# ---------------------------------------------------------------------------
# dnf
# mkrpm NAME VERSION RELEASE ARCH EPOCH [SPEC-LINE...]
mkrpm() {
  local name=$1 version=$2 release=$3 arch=$4 epoch=$5
  shift 5
  local spec=$work/specs/$name-$version-$release.spec file=/usr/share/autopod-dummy/$name-$version-$release
  mkdir -p "$work/specs"
  case $name in kernel-core) file=/boot/vmlinuz-$version-$release.$arch ;; esac
  {
    echo "Name: $name"
    echo "Version: $version"
    echo "Release: $release"
    [ -n "$epoch" ] && echo "Epoch: $epoch"
    echo "Summary: autopod test dummy"
    echo "License: MIT"
    echo "BuildArch: $arch"
    echo "AutoReqProv: no"
    local l
    for l in "$@"; do echo "$l"; done
    echo "%define debug_package %{nil}"
    echo "%description"
    echo "autopod test dummy"
    echo "%install"
    echo "mkdir -p %{buildroot}$(dirname "$file")"
    echo "echo $name-$version-$release > %{buildroot}$file"
    echo "%files"
    echo "$file"
  } >"$spec"
  rpmbuild --quiet --define "_topdir $work/rpmbuild" --define "_rpmdir $work/rpms" -bb "$spec" >/dev/null 2>&1 ||
    rpmbuild --define "_topdir $work/rpmbuild" --define "_rpmdir $work/rpms" -bb "$spec"
}

capture_dnf() {
  log "dnf: building the private repository and installroot in $work"
  local repo=$work/rpmrepo root=$work/dnfroot conf=$work/dnf.conf plugconf=$work/dnfplugins
  mkdir -p "$repo" "$root" "$work/dnfcache" "$plugconf"
  sed -e "s|^#autopodctl = .*|autopodctl = $recorder|" -e "s|^#host_root = .*|host_root = $root|" \
    "$top/packaging/etc/dnf/plugins/autopod.conf" >"$plugconf/autopod.conf"
  cat >"$conf" <<EOF
[main]
reposdir=/dev/null
pluginpath=$top/packaging/usr/lib/python3/dist-packages/dnf-plugins
pluginconfpath=$plugconf
cachedir=$work/dnfcache
gpgcheck=0
installonly_limit=2
keepcache=0

[local]
name=local
baseurl=file://$repo
gpgcheck=0
EOF
  local dnf=(dnf -c "$conf" --installroot="$root" --releasever=1 -y)

  # The first set: two kernels (kernel-core is install-only, as on Fedora), an
  # ordinary package, one with an epoch, one that newtool will obsolete.
  mkrpm hello 1.0 1 noarch ""
  mkrpm oldtool 1.0 1 noarch ""
  mkrpm epochpkg 1.0 1 noarch 2
  local k
  for k in 6.0.0 6.1.0; do
    mkrpm kernel-core $k 1 x86_64 "" "Provides: installonlypkg(kernel)"
    mkrpm kernel $k 1 x86_64 "" "Requires: kernel-core = $k-1"
  done
  mkrpm systemd 253 1 x86_64 ""
  cp "$work"/rpms/*/*.rpm "$repo/"
  createrepo_c -q "$repo"

  hookrun dnf/install dnf-pre-transaction "${dnf[@]}" install hello oldtool epochpkg systemd kernel-6.0.0-1
  hookrun dnf/install-kernel dnf-pre-transaction "${dnf[@]}" install kernel-6.1.0-1

  # The second set: a third kernel (installonly_limit=2 removes the oldest), upgrades
  # (one with an epoch), newtool obsoleting oldtool.
  rm -rf "$work/rpms"
  mkrpm hello 1.1 1 noarch ""
  mkrpm epochpkg 1.0 2 noarch 2
  mkrpm kernel-core 6.2.0 1 x86_64 "" "Provides: installonlypkg(kernel)"
  mkrpm kernel 6.2.0 1 x86_64 "" "Requires: kernel-core = 6.2.0-1"
  mkrpm systemd 253 2 x86_64 ""
  mkrpm newtool 2.0 1 noarch "" "Obsoletes: oldtool < 2.0" "Provides: oldtool = 2.0"
  cp "$work"/rpms/*/*.rpm "$repo/"
  createrepo_c -q --update "$repo"

  hookrun dnf/upgrade dnf-pre-transaction "${dnf[@]}" --refresh upgrade
  hookrun dnf/downgrade dnf-pre-transaction "${dnf[@]}" downgrade hello
  hookrun dnf/reinstall dnf-pre-transaction "${dnf[@]}" reinstall hello
  hookrun dnf/remove dnf-pre-transaction "${dnf[@]}" remove newtool

  # The hook refuses: dnf stops before rpm runs and shows the hook's message.
  rm -rf "$RECORD_DIR" && mkdir -p "$RECORD_DIR"
  RECORD_FAIL=dnf-pre-transaction RECORD_MESSAGE="autopod: refusing (recorder)" \
    cap dnf/refused "${dnf[@]}" install newtool
}

# ---------------------------------------------------------------------------
versions() {
  {
    echo "captured $(date -u +%Y-%m-%d) on $(. /etc/os-release && echo "$PRETTY_NAME")"
    apt-get --version | sed -n 1p
    dpkg --version | sed -n 1p
    rpm --version
    dnf --version | sed -n 1p
    createrepo_c --version | sed -n 1p
  } >"$out/versions.txt"
}

mkdir -p "$out/apt" "$out/dnf"
[ $# -eq 0 ] && set -- apt dnf
for what in "$@"; do "capture_$what"; done
versions
