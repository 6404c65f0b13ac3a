package updater

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is an installed kernel.
type Kernel struct {
	// Release is the kernel's `uname -r` once booted: 6.1.0-13-amd64 (Debian, the
	// package name's suffix), 6.5.6-300.fc39.x86_64 (RPM, VERSION-RELEASE.ARCH), or the
	// suffix of /boot/vmlinuz-RELEASE.
	Release string
	// Package and Version are the package that installed it, when known.
	Package string
	Version string
}

// Uname is the running kernel, as uname(2) tells.
type Uname struct {
	Release string // uname -r
	Version string // uname -v: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1 (2023-09-29)"
}

// SystemUname reads the running kernel's release and version with uname(2).
func SystemUname() (Uname, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Uname{}, fmt.Errorf("uname: %w", err)
	}
	return Uname{Release: unix.ByteSliceToString(u.Release[:]), Version: unix.ByteSliceToString(u.Version[:])}, nil
}

// ParseDpkgKernels reads the output of
//
//	dpkg-query -W -f='${Package} ${Version} ${Status}\n' 'linux-image-*'
//
// and returns the installed kernel images. Metapackages (linux-image-amd64), debug
// symbols (-dbg) and packages not installed (state rc: removed, its configuration
// kept) are left out. Debian's linux-image-RELEASE-unsigned and Ubuntu's
// linux-image-unsigned-RELEASE install the same /boot/vmlinuz-RELEASE as the signed
// package and count as that release.
func ParseDpkgKernels(out []byte) ([]Kernel, error) {
	var ks []Kernel
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		// Package, Version (empty for a package dpkg knows of but never installed),
		// and Status: want, error flag, state.
		if len(f) == 4 && (f[2] == "ok" || f[2] == "reinstreq") {
			continue // no version: known to dpkg, never installed ("unknown ok not-installed")
		}
		if len(f) != 5 {
			return nil, lineError("dpkg-query", n, line)
		}
		pkg, version, state := f[0], f[1], f[4]
		if !isToken(pkg) || !isToken(version) {
			return nil, lineError("dpkg-query", n, line)
		}
		switch state {
		case "installed", "triggers-pending", "triggers-awaited":
		default:
			continue
		}
		release, ok := dpkgKernelRelease(pkg)
		if !ok {
			continue
		}
		ks = append(ks, Kernel{Release: release, Package: pkg, Version: version})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading dpkg-query output: %w", err)
	}
	return ks, nil
}

// dpkgKernelRelease returns the kernel release that package pkg installs, if it is a
// kernel image: the name after linux-image-, which starts with a digit for a real
// image and with a flavour for a metapackage (linux-image-amd64, -cloud-amd64).
func dpkgKernelRelease(pkg string) (string, bool) {
	r, ok := strings.CutPrefix(pkg, "linux-image-")
	if !ok {
		return "", false
	}
	r = strings.TrimPrefix(r, "unsigned-")
	r = strings.TrimSuffix(r, "-unsigned")
	if r == "" || !isDigit(r[0]) || strings.HasSuffix(r, "-dbg") || strings.HasSuffix(r, "-dbgsym") {
		return "", false
	}
	return r, true
}

// ParseRPMKernels reads the output of
//
//	rpm -q kernel-core --qf '%{VERSION}-%{RELEASE}.%{ARCH}\n'
//
// one line per installed kernel ("package kernel-core is not installed" when none).
func ParseRPMKernels(out []byte) ([]Kernel, error) {
	var ks []Kernel
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || (strings.HasPrefix(line, "package ") && strings.HasSuffix(line, " is not installed")) {
			continue
		}
		if !isToken(line) || !strings.Contains(line, "-") {
			return nil, lineError("rpm -q", n, line)
		}
		vr, _ := stripRPMArch(line)
		ks = append(ks, Kernel{Release: line, Package: "kernel-core", Version: vr})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading rpm -q output: %w", err)
	}
	return ks, nil
}

// KernelsFromBoot returns the kernels that the file names in /boot name
// (vmlinuz-RELEASE), leaving out Fedora's rescue image (vmlinuz-0-rescue-MACHINEID),
// which is a copy of some kernel, never a newer one.
func KernelsFromBoot(names []string) []Kernel {
	var ks []Kernel
	for _, n := range names {
		r, ok := strings.CutPrefix(n, "vmlinuz-")
		if !ok || r == "" || strings.HasPrefix(r, "0-rescue-") || strings.HasSuffix(r, ".old") || !isToken(r) {
			continue
		}
		ks = append(ks, Kernel{Release: r})
	}
	return ks
}

// rpmArches are the architectures that end an RPM kernel's release string.
var rpmArches = map[string]bool{
	"x86_64": true, "aarch64": true, "ppc64le": true, "s390x": true, "i686": true,
	"armv7hl": true, "riscv64": true, "noarch": true,
}

// stripRPMArch cuts a known architecture off an RPM kernel release
// (6.5.6-300.fc39.x86_64 → 6.5.6-300.fc39). Comparing with it left on would be wrong:
// "1.fc39.x86_64" sorts before "1.x86_64" although 1.fc39 is newer than 1.
func stripRPMArch(release string) (string, string) {
	if i := strings.LastIndexByte(release, '.'); i > 0 && rpmArches[release[i+1:]] {
		return release[:i], release[i+1:]
	}
	return release, ""
}

// CompareKernelReleases orders two kernel releases as the boot loader of backend b's
// distributions picks the default: Debian's grub-mkconfig sorts /boot/vmlinuz-* with
// `dpkg --compare-versions`; RPM distributions order kernels by rpm's version order
// (grubby, BLS entries).
func CompareKernelReleases(b Backend, x, y string) (int, error) {
	if b == Dnf {
		xs, _ := stripRPMArch(x)
		ys, _ := stripRPMArch(y)
		return CompareRPMVersions(xs, ys), nil
	}
	return CompareDebianVersions(x, y)
}

// newestKernel returns the newest of ks by CompareKernelReleases, skipping releases that
// cannot be compared.
func newestKernel(b Backend, ks []Kernel) (Kernel, bool) {
	var best Kernel
	found := false
	for _, k := range ks {
		if !found {
			if _, err := CompareKernelReleases(b, k.Release, k.Release); err == nil {
				best, found = k, true
			}
			continue
		}
		if c, err := CompareKernelReleases(b, k.Release, best.Release); err == nil && c > 0 {
			best = k
		}
	}
	return best, found
}

// debianUnameVersion finds the package version in a Debian kernel's uname -v
// ("#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1 (2023-09-29)").
var debianUnameVersion = regexp.MustCompile(`\bDebian ([0-9][^ ]*) \(`)

// kernelReasons returns the newest installed kernel and why the running one calls for
// a reboot: an installed kernel newer than the running one (the boot loader boots
// it next), or, on Debian, the running release's own package upgraded in place (same
// ABI, new build: uname -v names the build that runs).
func kernelReasons(b Backend, running Uname, ks []Kernel) (string, []Reason) {
	newest, ok := newestKernel(b, ks)
	if !ok {
		return "", nil
	}
	var reasons []Reason
	if running.Release != "" {
		if c, err := CompareKernelReleases(b, running.Release, newest.Release); err == nil && c < 0 {
			reasons = append(reasons, Reason{
				Kind:     ReasonNewerKernel,
				Detail:   fmt.Sprintf("running kernel %s is older than the newest installed kernel %s", running.Release, newest.Release),
				Packages: nonEmpty(newest.Package),
			})
		}
	}
	if b != Apt {
		return newest.Release, reasons
	}
	m := debianUnameVersion.FindStringSubmatch(running.Version)
	if m == nil {
		return newest.Release, reasons
	}
	for _, k := range ks {
		if k.Release != running.Release || k.Version == "" {
			continue
		}
		if c, err := CompareDebianVersions(m[1], k.Version); err == nil && c < 0 {
			reasons = append(reasons, Reason{
				Kind:     ReasonNewerKernel,
				Detail:   fmt.Sprintf("the running kernel %s is build %s, its package %s is now %s", running.Release, m[1], k.Package, k.Version),
				Packages: nonEmpty(k.Package),
			})
		}
	}
	return newest.Release, reasons
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// mergeKernels joins kernels found by the package database and in /boot, one per
// release, keeping the package's details.
func mergeKernels(lists ...[]Kernel) []Kernel {
	var out []Kernel
	idx := map[string]int{}
	for _, l := range lists {
		for _, k := range l {
			if i, ok := idx[k.Release]; ok {
				if out[i].Package == "" {
					out[i] = k
				}
				continue
			}
			idx[k.Release] = len(out)
			out = append(out, k)
		}
	}
	return out
}
