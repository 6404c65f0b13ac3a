#!/usr/bin/env bash
# capture.sh — regenerate the captured tool outputs in this directory.
#
# Every *.out / *.err / *.rc triple here is what a real tool printed on stdout, on
# stderr, and its exit code, on a Debian 12 host (apt 2.6, dpkg 1.21, dnf 4.14 with
# dnf-plugins-core, rpm 4.18). The parsers' tests read them; nothing is hand-written.
#
# The host's own package state is never changed:
#   apt  a throwaway universe under a temp dir: dummy .debs built with dpkg-deb, a flat
#        repository indexed by apt-ftparchive (file: URI), a dpkg database and root of
#        its own (dpkg --root), and an apt configuration that apt reads *instead of*
#        /etc/apt (APT_CONFIG, which apt loads before the host's apt.conf.d, so no host
#        hook such as docker-clean's DPkg::Post-Invoke runs).
#   dnf  dummy RPMs built with rpmbuild, a repository made by createrepo_c, and
#        dnf --installroot with a private dnf.conf (reposdir=/dev/null) and cachedir, as
#        in shared/notes/dnf-and-rpm-on-debian.md.
#   host the host's own `apt-get --simulate dist-upgrade` and `apt list --upgradable`,
#        which only read (Debug::NoLocking=1: no lock is taken either).
#
# Usage: updater/testdata/capture.sh [apt] [dnf] [host]   (default: all three)
# OUT=DIR writes the captures there instead of here (the root test
# TestRootCapturesReproduce re-runs the apt and dnf captures and compares).
# Needs root (dpkg --root, dnf --installroot) and:
#   apt-get install -y dpkg-dev apt-utils rpm dnf dnf-plugins-core createrepo-c
set -euo pipefail
export LC_ALL=C TZ=UTC

out=${OUT:-$(cd "$(dirname "$0")" && pwd)}
work=$(mktemp -d /tmp/autopod-capture.XXXXXX)
# KEEP=1 keeps the temp dir, to look at what a capture was made from.
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
log() { printf 'capture: %s\n' "$*" >&2; }

# cap NAME CMD... runs CMD and keeps NAME.out, NAME.err and NAME.rc. A non-zero exit is
# data here (dnf check-update exits 100 when there are updates), not a failure.
cap() {
  local name=$1
  shift
  local rc=0
  "$@" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
  echo "$rc" >"$out/$name.rc"
  # Temp paths differ on every run; make them stable so a re-capture diffs cleanly.
  sed -i -e "s|$work|/tmp/capture|g" -e "s|${work//\//_}|_tmp_capture|g" "$out/$name.out" "$out/$name.err"
  log "$name: exit $rc, $(wc -l <"$out/$name.out") lines"
}

# ---------------------------------------------------------------------------
# apt: a private universe.
# mkdeb NAME VERSION ARCH [CONTROL-LINE...] builds a package holding one file. Kernel
# images carry /boot/vmlinuz-RELEASE like the real ones; "conffile" gives the package
# a conffile, so that removing it leaves it in state rc (config-files), as happens to
# old kernels on real hosts.
mkdeb() {
  local name=$1 version=$2 arch=$3
  shift 3
  local d=$work/debsrc/${name}_$version
  mkdir -p "$d/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: autopod tests <tests@autopod.invalid>"
    echo "Description: autopod test dummy"
    local l
    for l in "$@"; do [ "$l" = conffile ] || echo "$l"; done
  } >"$d/DEBIAN/control"
  case $name in
  linux-image-[0-9]*)
    mkdir -p "$d/boot"
    echo "dummy kernel $name $version" >"$d/boot/vmlinuz-${name#linux-image-}"
    ;;
  *)
    mkdir -p "$d/usr/share/doc/$name"
    echo "$name $version" >"$d/usr/share/doc/$name/dummy"
    ;;
  esac
  if [[ " $* " == *" conffile "* ]]; then
    mkdir -p "$d/etc"
    echo "# $name" >"$d/etc/$name.conf"
    echo "/etc/$name.conf" >"$d/DEBIAN/conffiles"
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
  # Debian's kernel rules (VersionedKernelPackages, NeverAutoRemove) are part of how apt
  # treats kernels; keep them, and nothing else of the host's configuration.
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
APT::Architectures { "amd64"; };
DPkg::Options { "--root=$root"; "--admindir=$root/var/lib/dpkg"; "--force-not-root"; "--force-bad-path"; };
EOF
  export APT_CONFIG=$work/apt.conf
  echo "deb [trusted=yes] file:$repo ./" >"$etc/sources.list"
  local dpkg=(dpkg --root="$root" --admindir="$root/var/lib/dpkg" --force-not-root --force-bad-path)

  # What the host has installed at first: the old kernel ABI 6.99.0-1 with its
  # metapackage, boot-critical packages, an ordinary one (Architecture: all), one with an
  # epoch, one that the upgrade will remove, and an older kernel ABI 6.98.0-1 that is
  # removed but keeps its conffile.
  mkdeb linux-image-6.98.0-1-amd64 6.98.3-1 amd64 conffile
  mkdeb linux-image-6.99.0-1-amd64 6.99.1-1 amd64
  mkdeb linux-image-amd64 6.99.1-1 amd64 "Depends: linux-image-6.99.0-1-amd64"
  mkdeb linux-headers-6.99.0-1-amd64 6.99.1-1 amd64
  mkdeb linux-headers-amd64 6.99.1-1 amd64 "Depends: linux-headers-6.99.0-1-amd64"
  mkdeb linux-libc-dev 6.99.1-1 amd64
  mkdeb systemd 252.1-1 amd64
  mkdeb libc6 2.36-9 amd64
  mkdeb intel-microcode 3.20230808.1~deb12u1 amd64
  mkdeb grub-efi-amd64-bin 2.06-13 amd64
  mkdeb hello 1.0-1 all
  mkdeb login 1:4.13+dfsg1-1 amd64
  mkdeb oldtool 1.0-1 amd64
  "${dpkg[@]}" -i "$work"/debs/*.deb >/dev/null
  "${dpkg[@]}" -r linux-image-6.98.0-1-amd64 >/dev/null
  cap apt/dpkg-query-kernels-one dpkg-query --admindir="$root/var/lib/dpkg" -W \
    -f='${Package} ${Version} ${Status}\n' 'linux-image-*'
  cap apt/dpkg-query-kernels-none dpkg-query --admindir="$root/var/lib/dpkg" -W \
    -f='${Package} ${Version} ${Status}\n' 'linux-image-no-such-*'

  # The repository: a new kernel ABI (a new package, pulled in by the metapackage), new
  # versions of the rest, and hello 2.0 conflicting with oldtool, so that the upgrade
  # removes oldtool.
  mv "$work/debs" "$work/debs-installed"
  mkdir -p "$work/debs"
  mkdeb linux-image-6.99.0-2-amd64 6.99.2-1 amd64
  mkdeb linux-image-amd64 6.99.2-1 amd64 "Depends: linux-image-6.99.0-2-amd64"
  mkdeb linux-headers-6.99.0-2-amd64 6.99.2-1 amd64
  mkdeb linux-headers-amd64 6.99.2-1 amd64 "Depends: linux-headers-6.99.0-2-amd64"
  mkdeb linux-libc-dev 6.99.2-1 amd64
  mkdeb systemd 252.2-1 amd64
  mkdeb libc6 2.36-9+deb12u1 amd64
  mkdeb intel-microcode 3.20240312.1~deb12u1 amd64
  mkdeb grub-efi-amd64-bin 2.06-13+deb12u1 amd64
  mkdeb hello 2.0-1 all "Conflicts: oldtool"
  mkdeb login 1:4.13+dfsg1-1+deb12u1 amd64
  cp "$work"/debs/*.deb "$repo/"
  (cd "$repo" && apt-ftparchive packages . >Packages &&
    apt-ftparchive -o APT::FTPArchive::Release::Origin=autopod-test -o APT::FTPArchive::Release::Label=autopod-test \
      -o APT::FTPArchive::Release::Suite=stable -o APT::FTPArchive::Release::Version=12.99 \
      release . >Release)
  apt-get -q update >/dev/null

  cap apt/simulate-dist-upgrade apt-get --simulate -o Debug::NoLocking=1 dist-upgrade
  cap apt/list-upgradable apt list --upgradable

  # Really upgrade the private root, so that two kernel ABIs are installed; then there
  # is nothing left to do.
  apt-get -q -y dist-upgrade >/dev/null
  cap apt/dpkg-query-kernels-two dpkg-query --admindir="$root/var/lib/dpkg" -W \
    -f='${Package} ${Version} ${Status}\n' 'linux-image-*'
  cap apt/simulate-none apt-get --simulate -o Debug::NoLocking=1 dist-upgrade
  cap apt/list-upgradable-none apt list --upgradable
  cap apt/boot-ls ls "$root/boot"

  # A repository that cannot be read: apt-get update's error.
  echo "deb [trusted=yes] file:$work/no-such-repo ./" >"$etc/sources.list"
  cap apt/update-error apt-get -q update
  unset APT_CONFIG
}

capture_host() {
  log "host: this machine's own pending updates (read only)"
  cap apt/host-simulate-dist-upgrade apt-get --simulate -o Debug::NoLocking=1 dist-upgrade
  cap apt/host-list-upgradable apt list --upgradable
}

# ---------------------------------------------------------------------------
# dnf: dummy RPMs in a local repository, installed into a private installroot.
# mkrpm NAME VERSION RELEASE ARCH [EPOCH] [SPEC-LINE...]
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
  local repo=$work/rpmrepo root=$work/dnfroot conf=$work/dnf.conf
  mkdir -p "$repo" "$root" "$work/dnfcache" "$work/dnfplugins"
  # Plugins read their configuration from here instead of /etc/dnf/plugins, and every
  # plugin that hooks into transactions is off: on Debian, dnf-plugins-core's "local"
  # copies each downloaded package into a repository under the host's /var/lib/dnf,
  # and generate_completion_cache writes the host's /var/cache/dnf/packages.db (a fixed
  # path, whatever the installroot). needs-restarting is a command and stays.
  local p
  for p in local generate_completion_cache versionlock post-transaction-actions debuginfo-install; do
    printf '[main]\nenabled=0\n' >"$work/dnfplugins/$p.conf"
  done
  cat >"$conf" <<EOF
[main]
reposdir=/dev/null
pluginconfpath=$work/dnfplugins
cachedir=$work/dnfcache
gpgcheck=0
installonly_limit=3
keepcache=0

[local]
name=local
baseurl=file://$repo
gpgcheck=0
EOF
  local dnf=(dnf -c "$conf" --installroot="$root" --releasever=1)
  local rpm=(rpm --root="$root")
  # A name.arch too long for dnf's 80 columns, which makes check-update wrap its line.
  local long=autopod-a-package-whose-name-is-so-long-that-dnf-wraps-its-check-update-line

  # The first set: ordinary packages only, then the core ones (whose install time after
  # boot is what needs-restarting -r reports).
  mkrpm hello 1.0 1 noarch ""
  mkrpm oldtool 1.0 1 noarch ""
  mkrpm "$long" 1.0 1 x86_64 ""
  mkrpm epochpkg 1.0 1 noarch 2
  mkrpm kernel-core 6.1.0 1 x86_64 "" "Provides: installonlypkg(kernel)"
  mkrpm kernel 6.1.0 1 x86_64 "" "Requires: kernel-core = 6.1.0-1"
  mkrpm systemd 253 1 x86_64 ""
  mkrpm glibc 2.37 1 x86_64 ""
  mkrpm linux-firmware 20230404 1 noarch ""
  cp "$work"/rpms/*/*.rpm "$repo/"
  createrepo_c -q "$repo"

  "${dnf[@]}" -q -y install hello oldtool "$long" epochpkg >/dev/null
  cap dnf/needs-restarting-none "${dnf[@]}" needs-restarting -r
  cap dnf/rpm-kernel-core-none "${rpm[@]}" -q kernel-core --qf '%{VERSION}-%{RELEASE}.%{ARCH}\n'
  "${dnf[@]}" -q -y install kernel systemd glibc linux-firmware >/dev/null
  cap dnf/needs-restarting-reboot "${dnf[@]}" needs-restarting -r
  cap dnf/rpm-kernel-core-one "${rpm[@]}" -q kernel-core --qf '%{VERSION}-%{RELEASE}.%{ARCH}\n'

  # The second set: a new kernel, new core packages, new ordinary ones, and newtool
  # obsoleting oldtool.
  rm -rf "$work/rpms"
  mkrpm hello 1.1 1 noarch ""
  mkrpm "$long" 1.1 1 x86_64 ""
  mkrpm epochpkg 1.0 2 noarch 2
  mkrpm kernel-core 6.2.0 1 x86_64 "" "Provides: installonlypkg(kernel)"
  mkrpm kernel 6.2.0 1 x86_64 "" "Requires: kernel-core = 6.2.0-1"
  mkrpm systemd 253 2 x86_64 ""
  mkrpm glibc 2.37 2 x86_64 ""
  mkrpm newtool 2.0 1 noarch "" "Obsoletes: oldtool < 2.0" "Provides: oldtool = 2.0"
  cp "$work"/rpms/*/*.rpm "$repo/"
  createrepo_c -q --update "$repo"

  cap dnf/check-update "${dnf[@]}" --refresh check-update
  cap dnf/check-update-cacheonly "${dnf[@]}" -C check-update
  # Without --refresh or -C, dnf uses its metadata while it is fresh and says so first.
  cap dnf/check-update-cached "${dnf[@]}" check-update
  # On a terminal dnf fits its table to the terminal's width, and a name.arch that does
  # not fit gets a line of its own, with version and repository on the next. The agent
  # runs dnf without a terminal, but the parser must not misread such output either.
  # script(1) gives dnf an 80-column pty; stdout and stderr arrive merged, with CRLF.
  cap dnf/check-update-tty script -q -e -c "stty cols 80 rows 50; ${dnf[*]} --color=never check-update" /dev/null
  cap dnf/rpm-installed "${rpm[@]}" -q --qf '%{NAME} %{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n' \
    hello.noarch "$long.x86_64" epochpkg.noarch kernel-core.x86_64 kernel.x86_64 systemd.x86_64 \
    glibc.x86_64 newtool.noarch

  "${dnf[@]}" -q -y upgrade >/dev/null
  cap dnf/rpm-kernel-core-two "${rpm[@]}" -q kernel-core --qf '%{VERSION}-%{RELEASE}.%{ARCH}\n'
  cap dnf/check-update-none "${dnf[@]}" --refresh check-update

  # A repository that cannot be read: check-update's error (skip_if_unavailable=0).
  sed -i "s|^baseurl=.*|baseurl=file://$work/no-such-repo\nskip_if_unavailable=0|" "$conf"
  cap dnf/check-update-error "${dnf[@]}" --refresh check-update
}

# ---------------------------------------------------------------------------
versions() {
  # sed -n 1p, not head -1: it reads all, so no tool dies of SIGPIPE (pipefail).
  {
    echo "captured $(date -u +%Y-%m-%d) on $(. /etc/os-release && echo "$PRETTY_NAME")"
    apt-get --version | sed -n 1p
    dpkg --version | sed -n 1p
    rpm --version
    dnf --version | sed -n 1p
    dpkg-query -W -f='dnf-plugins-core ${Version}\n' dnf-plugins-core 2>/dev/null || true
    createrepo_c --version | sed -n 1p
  } >"$out/versions.txt"
}

mkdir -p "$out/apt" "$out/dnf"
[ $# -eq 0 ] && set -- apt dnf host
for what in "$@"; do "capture_$what"; done
versions
