package updater

import (
	"path"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		b    Backend
		name string
		want Class
	}{
		{Apt, "linux-image-6.1.0-13-amd64", ClassKernel},
		{Apt, "linux-image-amd64", ClassKernel},
		{Apt, "linux-image-cloud-amd64", ClassKernel},
		{Apt, "linux-image-6.1.0-13-amd64-unsigned", ClassKernel},
		{Apt, "linux-image-6.1.0-13-amd64-dbg", ClassOther},
		{Apt, "linux-modules-6.5.0-14-generic", ClassKernel},
		{Apt, "linux-modules-extra-6.5.0-14-generic", ClassKernel},
		{Apt, "linux-signed-image-generic", ClassKernel},
		{Apt, "linux-headers-amd64", ClassOther},
		{Apt, "linux-headers-6.1.0-13-amd64", ClassOther},
		{Apt, "linux-headers-6.1.0-13-common", ClassOther},
		{Apt, "linux-libc-dev", ClassOther},
		{Apt, "linux-kbuild-6.1", ClassOther},
		{Apt, "linux-compiler-gcc-12-x86", ClassOther},
		{Apt, "linux-perf", ClassOther},
		{Apt, "linux-tools-common", ClassOther},
		{Apt, "linux-source-6.1", ClassOther},
		{Apt, "linux-base", ClassOther},
		{Apt, "systemd", ClassBootCritical},
		{Apt, "systemd-sysv", ClassBootCritical},
		{Apt, "systemd-boot-efi", ClassBootCritical},
		{Apt, "libsystemd0", ClassBootCritical},
		{Apt, "systemd-container", ClassOther},
		{Apt, "libc6", ClassBootCritical},
		{Apt, "libc6:i386", ClassBootCritical},
		{Apt, "libc6-dev", ClassOther},
		{Apt, "libc-bin", ClassOther},
		{Apt, "intel-microcode", ClassBootCritical},
		{Apt, "amd64-microcode", ClassBootCritical},
		{Apt, "grub-efi-amd64-signed", ClassBootCritical},
		{Apt, "grub-pc", ClassBootCritical},
		{Apt, "grub-common", ClassBootCritical},
		{Apt, "grub2-common", ClassBootCritical},
		{Apt, "shim-signed", ClassBootCritical},
		{Apt, "shim-helpers-amd64-signed", ClassBootCritical},
		{Apt, "initramfs-tools", ClassBootCritical},
		{Apt, "initramfs-tools-core", ClassBootCritical},
		{Apt, "dracut", ClassBootCritical},
		{Apt, "dracut-core", ClassBootCritical},
		{Apt, "linux-firmware", ClassBootCritical},
		{Apt, "firmware-linux-nonfree", ClassBootCritical},
		{Apt, "firmware-misc-nonfree", ClassBootCritical},
		{Apt, "udev", ClassBootCritical},
		{Apt, "libudev1", ClassBootCritical},
		{Apt, "dbus", ClassBootCritical},
		{Apt, "dbus-daemon", ClassBootCritical},
		{Apt, "dbus-system-bus-common", ClassBootCritical},
		{Apt, "dbus-broker", ClassBootCritical},
		{Apt, "dbus-user-session", ClassOther},
		{Apt, "openssl", ClassOther},
		{Apt, "kernel-wedge", ClassOther}, // a Debian build tool, not Fedora's kernel-*
		{Apt, "hello", ClassOther},

		{Dnf, "kernel", ClassKernel},
		{Dnf, "kernel-core", ClassKernel},
		{Dnf, "kernel-modules", ClassKernel},
		{Dnf, "kernel-modules-core", ClassKernel},
		{Dnf, "kernel-modules-extra", ClassKernel},
		{Dnf, "kernel-rt-core", ClassKernel},
		{Dnf, "kernel-64k-core", ClassKernel},
		{Dnf, "kernel-uki-virt", ClassKernel},
		{Dnf, "kernel-headers", ClassOther},
		{Dnf, "kernel-devel", ClassOther},
		{Dnf, "kernel-debug-devel", ClassOther},
		{Dnf, "kernel-devel-matched", ClassOther},
		{Dnf, "kernel-tools", ClassOther},
		{Dnf, "kernel-tools-libs", ClassOther},
		{Dnf, "kernel-srpm-macros", ClassOther},
		{Dnf, "kernel-debuginfo-common-x86_64", ClassOther},
		{Dnf, "kerneloops", ClassOther},
		{Dnf, "glibc", ClassBootCritical},
		{Dnf, "glibc-devel", ClassOther},
		{Dnf, "systemd", ClassBootCritical},
		{Dnf, "systemd-udev", ClassBootCritical},
		{Dnf, "systemd-libs", ClassBootCritical},
		{Dnf, "systemd-container", ClassOther},
		{Dnf, "dbus", ClassBootCritical},
		{Dnf, "dbus-broker", ClassBootCritical},
		{Dnf, "dbus-daemon", ClassBootCritical},
		{Dnf, "linux-firmware", ClassBootCritical},
		{Dnf, "linux-firmware-whence", ClassBootCritical},
		{Dnf, "amd-ucode-firmware", ClassBootCritical},
		{Dnf, "iwlwifi-mvm-firmware", ClassBootCritical},
		{Dnf, "microcode_ctl", ClassBootCritical},
		{Dnf, "grub2-efi-x64", ClassBootCritical},
		{Dnf, "grub2-tools-minimal", ClassBootCritical},
		{Dnf, "shim-x64", ClassBootCritical},
		{Dnf, "dracut", ClassBootCritical},
		{Dnf, "dracut-config-rescue", ClassBootCritical},
		{Dnf, "libc6", ClassOther}, // Debian's name means nothing on an RPM host
		{Dnf, "linux-image-amd64", ClassOther},
		{Dnf, "hello", ClassOther},
	}
	for _, tt := range tests {
		if got := Classify(tt.b, tt.name); got != tt.want {
			t.Errorf("Classify(%s, %q) = %s, want %s", tt.b, tt.name, got, tt.want)
		}
	}
}

// TestNeedsRestartingCoreIsNotOther: every package for which dnf needs-restarting -r
// asks for a reboot (NEED_REBOOT in dnf-plugins-core's needs_restarting.py) is a kernel
// or boot-critical update for us too.
func TestNeedsRestartingCoreIsNotOther(t *testing.T) {
	for _, name := range []string{"kernel", "kernel-rt", "glibc", "linux-firmware", "systemd", "dbus", "dbus-broker", "dbus-daemon"} {
		if c := Classify(Dnf, name); c == ClassOther {
			t.Errorf("%s is %s", name, c)
		}
	}
}

// TestRulesReachable checks that the tables' patterns are valid and that no rule is
// shadowed by an earlier one: each pattern, taken literally as a name, must get the
// rule's own class.
func TestRulesReachable(t *testing.T) {
	for b, rules := range map[Backend][]rule{Apt: aptRules, Dnf: dnfRules} {
		for _, r := range rules {
			if _, err := path.Match(r.pattern, ""); err != nil {
				t.Errorf("%s: bad pattern %q: %v", b, r.pattern, err)
			}
			if got := Classify(b, r.pattern); got != r.class {
				t.Errorf("%s: rule %q (%s) is shadowed: the name %q classifies as %s", b, r.pattern, r.class, r.pattern, got)
			}
		}
	}
}
