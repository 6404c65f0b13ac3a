package updater

import (
	"path"
	"strings"
)

// Class says what an update means for the pods on the host.
type Class string

const (
	// ClassKernel is a new kernel: it only runs after a reboot, so the pods must be
	// evacuated first.
	ClassKernel Class = "kernel"
	// ClassBootCritical is code that the boot path or PID 1 runs (libc, systemd, udev,
	// D-Bus, microcode, firmware, the boot loader, the initramfs generator): fully in
	// effect only after a reboot, and a risk to the next boot if it goes wrong.
	ClassBootCritical Class = "boot-critical"
	// ClassOther is everything else: it takes effect when its programs restart.
	ClassOther Class = "other"
)

// rule classifies the packages whose name matches pattern (path.Match syntax).
type rule struct {
	pattern string
	class   Class
}

// The rule tables. The first matching rule wins, so the exceptions come before the
// patterns they carve out of; a name that matches none is ClassOther. Names are
// without an architecture qualifier (libc6, not libc6:i386).
//
// Package names that look like kernels but are not the kernel that boots (headers,
// build tools, debug symbols, userspace headers, perf) are ClassOther: updating them
// needs no reboot. A kernel's metapackage (linux-image-amd64, kernel) is ClassKernel
// because it is what pulls the new kernel in.
var aptRules = []rule{
	{"linux-image-*-dbg", ClassOther},
	{"linux-image-*-dbgsym", ClassOther},
	{"linux-headers-*", ClassOther},
	{"linux-libc-dev", ClassOther},
	{"linux-kbuild-*", ClassOther},
	{"linux-compiler-*", ClassOther},
	{"linux-source*", ClassOther},
	{"linux-doc*", ClassOther},
	{"linux-perf*", ClassOther},
	{"linux-tools-*", ClassOther},
	{"linux-cloud-tools-*", ClassOther},

	{"linux-image-*", ClassKernel},
	{"linux-signed-image-*", ClassKernel},
	{"linux-modules-*", ClassKernel}, // Ubuntu: linux-modules-ABI and linux-modules-extra-ABI

	{"libc6", ClassBootCritical},
	{"systemd", ClassBootCritical},
	{"systemd-sysv", ClassBootCritical},
	{"systemd-boot*", ClassBootCritical},
	{"libsystemd0", ClassBootCritical},
	{"libsystemd-shared", ClassBootCritical},
	{"udev", ClassBootCritical},
	{"libudev1", ClassBootCritical},
	{"dbus", ClassBootCritical},
	{"dbus-daemon", ClassBootCritical},
	{"dbus-system-bus-common", ClassBootCritical},
	{"dbus-broker", ClassBootCritical},
	{"libdbus-1-3", ClassBootCritical},
	{"*-microcode", ClassBootCritical}, // intel-microcode, amd64-microcode
	{"linux-firmware", ClassBootCritical},
	{"firmware-*", ClassBootCritical},
	{"grub*", ClassBootCritical},
	{"shim*", ClassBootCritical},
	{"initramfs-tools*", ClassBootCritical},
	{"dracut*", ClassBootCritical},
}

var dnfRules = []rule{
	{"kernel-headers", ClassOther},
	{"kernel-cross-headers", ClassOther},
	{"kernel-*devel*", ClassOther}, // kernel-devel, kernel-debug-devel, kernel-devel-matched
	{"kernel-tools*", ClassOther},
	{"kernel-doc", ClassOther},
	{"kernel-debuginfo*", ClassOther},
	{"kernel-srpm-macros", ClassOther},
	{"kernel-rpm-macros", ClassOther},
	{"kernel-abi-*", ClassOther},
	{"kernel-selftests-internal", ClassOther},

	{"kernel", ClassKernel},
	{"kernel-*", ClassKernel}, // kernel-core, kernel-modules*, kernel-rt*, kernel-64k*, kernel-uki-virt

	{"glibc", ClassBootCritical},
	{"systemd", ClassBootCritical},
	{"systemd-udev", ClassBootCritical},
	{"systemd-libs", ClassBootCritical},
	{"systemd-boot*", ClassBootCritical},
	{"dbus", ClassBootCritical},
	{"dbus-daemon", ClassBootCritical},
	{"dbus-broker", ClassBootCritical},
	{"dbus-libs", ClassBootCritical},
	{"microcode_ctl", ClassBootCritical},
	{"linux-firmware*", ClassBootCritical},
	{"*-firmware", ClassBootCritical}, // amd-ucode-firmware, iwlwifi-*-firmware
	{"grub2-*", ClassBootCritical},
	{"shim*", ClassBootCritical},
	{"dracut*", ClassBootCritical},
}

// Classify returns the class of the package name (with or without an ":arch"
// qualifier) under backend b's naming.
func Classify(b Backend, name string) Class {
	name, _, _ = strings.Cut(name, ":")
	rules := aptRules
	if b == Dnf {
		rules = dnfRules
	}
	for _, r := range rules {
		if ok, _ := path.Match(r.pattern, name); ok {
			return r.class
		}
	}
	return ClassOther
}
