// Package updater finds out whether a host has updates pending and whether it needs a
// reboot, so that the agent can evacuate its pods before a kernel or boot-critical
// update takes effect. It installs nothing.
//
// # Detection
//
// A Detector runs the package tools through a Runner (ExecRunner on a host, a fake in
// tests) and returns a Report:
//
//   - apt (dpkg and apt-get): `apt-get --simulate dist-upgrade`, whose Inst/Remv lines
//     are apt's stable scripting interface, and `dpkg-query -W 'linux-image-*'` for
//     the installed kernels. ParseAptListUpgradable reads `apt list --upgradable`,
//     which apt itself calls unstable, for output captured elsewhere.
//   - dnf (rpm and dnf): `dnf -C check-update` (exit 100: updates, 0: none),
//     `rpm -q` for the versions installed now, `dnf needs-restarting -r` (exit 1: a
//     reboot is needed, dnf-plugins-core), `rpm -q kernel-core` for the kernels.
//
// Detection reads only cached metadata; the optional refresh (Options.Refresh:
// apt-get update, dnf makecache) is the one step that fetches from the repositories.
// The apt simulation takes no lock (Debug::NoLocking), so it neither waits for nor
// blocks an apt or dpkg run; dnf waits for its metadata lock while another dnf holds
// it, so callers bound Check with a context deadline.
//
// Each update is classified by an explicit rule table (class.go): ClassKernel
// (linux-image-*, kernel-core...), ClassBootCritical (libc, systemd, udev, D-Bus,
// microcode, firmware, boot loader, initramfs), ClassOther. Kernel headers, build
// tools and userspace headers are ClassOther: no reboot follows from them.
//
// A reboot is required when any of these says so, each a Reason: /run/reboot-required
// (with /run/reboot-required.pkgs naming who asked), dnf needs-restarting, or the
// running kernel (uname) being older than the newest installed one, found in the
// package database and in /boot. Kernels are ordered as the distribution's boot loader
// orders them, which is the package manager's version order: dpkg's algorithm
// (CompareDebianVersions, a pure reimplementation checked against the real dpkg) or
// rpm's (CompareRPMVersions, go-rpmutils, checked against the real rpm).
//
// # Parsers
//
// Every parser is a pure function over the tool's output ([]byte), tested on outputs
// captured from the real tools (testdata/capture.sh regenerates them) and fuzzed. A line
// that looks like a package line but cannot be read is an error (ErrUnparsable), never
// skipped: the skipped line could be the kernel. Tools run with LC_ALL=C.
//
// # Watching
//
// Watch reports changes to the package lists, metadata caches and package databases
// (DefaultWatchPaths) through inotify, coalesced, so the agent re-checks when apt-get
// update, dnf makecache or an install has run rather than by polling. The systemd unit
// units/autopod-updates.path watches the same paths to start the agent when it is not
// running.
package updater
