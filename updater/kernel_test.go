package updater

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseDpkgKernelsCaptured(t *testing.T) {
	tests := []struct {
		capture string
		want    []Kernel
	}{
		// linux-image-6.98.0-1-amd64 is in state rc (removed, conffile kept) and
		// linux-image-amd64 is the metapackage: neither is a kernel on disk.
		{"apt/dpkg-query-kernels-one", []Kernel{{"6.99.0-1-amd64", "linux-image-6.99.0-1-amd64", "6.99.1-1"}}},
		{"apt/dpkg-query-kernels-two", []Kernel{
			{"6.99.0-1-amd64", "linux-image-6.99.0-1-amd64", "6.99.1-1"},
			{"6.99.0-2-amd64", "linux-image-6.99.0-2-amd64", "6.99.2-1"},
		}},
		{"apt/dpkg-query-kernels-none", nil},
	}
	for _, tt := range tests {
		got, err := ParseDpkgKernels(loadCapture(t, tt.capture).out)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %+v, %v; want %+v", tt.capture, got, err, tt.want)
		}
	}
}

func TestParseDpkgKernelsLines(t *testing.T) {
	out := strings.Join([]string{
		"linux-image-6.1.0-13-amd64 6.1.55-1 install ok installed",
		"linux-image-6.1.0-13-amd64-dbg 6.1.55-1 install ok installed",
		"linux-image-6.1.0-15-amd64-unsigned 6.1.66-1 hold ok installed",
		"linux-image-unsigned-6.5.0-14-generic 6.5.0-14.14 install ok installed",
		"linux-image-cloud-amd64 6.1.55-1 install ok installed",
		"linux-image-6.1.0-9-amd64  unknown ok not-installed",
		"linux-image-6.1.0-10-amd64 6.1.38-1 install reinstreq half-installed",
		"linux-image-6.1.0-11-amd64 6.1.38-2 install ok triggers-pending",
		"",
	}, "\n")
	got, err := ParseDpkgKernels([]byte(out))
	want := []Kernel{
		{"6.1.0-13-amd64", "linux-image-6.1.0-13-amd64", "6.1.55-1"},
		{"6.1.0-15-amd64", "linux-image-6.1.0-15-amd64-unsigned", "6.1.66-1"},
		{"6.5.0-14-generic", "linux-image-unsigned-6.5.0-14-generic", "6.5.0-14.14"},
		{"6.1.0-11-amd64", "linux-image-6.1.0-11-amd64", "6.1.38-2"},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, %v\nwant %+v", got, err, want)
	}
	if _, err := ParseDpkgKernels([]byte("dpkg-query: no packages found matching linux-image-*\n")); !errors.Is(err, ErrUnparsable) {
		t.Errorf("an error message as output: err = %v", err)
	}
}

func TestParseRPMKernelsCaptured(t *testing.T) {
	tests := []struct {
		capture string
		want    []string
	}{
		{"dnf/rpm-kernel-core-none", nil},
		{"dnf/rpm-kernel-core-one", []string{"6.1.0-1.x86_64"}},
		{"dnf/rpm-kernel-core-two", []string{"6.1.0-1.x86_64", "6.2.0-1.x86_64"}},
	}
	for _, tt := range tests {
		ks, err := ParseRPMKernels(loadCapture(t, tt.capture).out)
		var got []string
		for _, k := range ks {
			got = append(got, k.Release)
			if k.Package != "kernel-core" || !strings.HasPrefix(k.Release, k.Version+".") {
				t.Errorf("%s: %+v", tt.capture, k)
			}
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, %v; want %v", tt.capture, got, err, tt.want)
		}
	}
	if _, err := ParseRPMKernels([]byte("error: cannot open Packages database\n")); !errors.Is(err, ErrUnparsable) {
		t.Errorf("garbage: err = %v", err)
	}
}

func TestKernelsFromBoot(t *testing.T) {
	names := strings.Fields(string(loadCapture(t, "apt/boot-ls").out))
	names = append(names, "config-6.99.0-2-amd64", "initrd.img-6.99.0-2-amd64", "vmlinuz",
		"vmlinuz-0-rescue-0123456789abcdef", "vmlinuz-6.5.6-300.fc39.x86_64", ".vmlinuz-6.5.6-300.fc39.x86_64.hmac",
		"vmlinuz-6.1.0-9-amd64.old", "System.map-6.99.0-2-amd64")
	var got []string
	for _, k := range KernelsFromBoot(names) {
		got = append(got, k.Release)
	}
	want := []string{"6.99.0-1-amd64", "6.99.0-2-amd64", "6.5.6-300.fc39.x86_64"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestCompareKernelReleases(t *testing.T) {
	tests := []struct {
		b    Backend
		x, y string
		want int
	}{
		{Apt, "6.1.0-13-amd64", "6.1.0-15-amd64", -1},
		{Apt, "6.1.0-13-amd64", "6.12.0-0.bpo.1-amd64", -1},
		{Apt, "5.15.0-91-generic", "5.15.0-101-generic", -1},
		{Dnf, "6.5.6-300.fc39.x86_64", "6.6.2-201.fc39.x86_64", -1},
		{Dnf, "5.14.0-362.8.1.el9_3.x86_64", "5.14.0-362.13.1.el9_3.x86_64", -1},
		// The architecture must come off: with it, 1.fc39.x86_64 < 1.x86_64.
		{Dnf, "6.2.0-1.fc39.x86_64", "6.2.0-1.x86_64", 1},
		{Dnf, "6.2.0-1.x86_64", "6.2.0-1.x86_64", 0},
	}
	for _, tt := range tests {
		got, err := CompareKernelReleases(tt.b, tt.x, tt.y)
		if err != nil || got != tt.want {
			t.Errorf("%s: CompareKernelReleases(%q, %q) = %d, %v; want %d", tt.b, tt.x, tt.y, got, err, tt.want)
		}
	}
	if _, err := CompareKernelReleases(Apt, "6.1.0-", "6.1.0-1"); !errors.Is(err, ErrBadVersion) {
		t.Errorf("a release dpkg rejects: err = %v", err)
	}
}

func TestKernelReasons(t *testing.T) {
	debianTwo := []Kernel{
		{"6.1.0-13-amd64", "linux-image-6.1.0-13-amd64", "6.1.55-1"},
		{"6.1.0-15-amd64", "linux-image-6.1.0-15-amd64", "6.1.66-1"},
	}
	tests := []struct {
		name       string
		b          Backend
		running    Uname
		ks         []Kernel
		wantNewest string
		wantKinds  int
		wantIn     string
	}{
		{"debian: newer ABI installed", Apt, Uname{"6.1.0-13-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.55-1 (2023-09-29)"},
			debianTwo, "6.1.0-15-amd64", 1, "older than the newest installed kernel 6.1.0-15-amd64"},
		{"debian: running the newest", Apt, Uname{"6.1.0-15-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.66-1 (2023-12-09)"},
			debianTwo, "6.1.0-15-amd64", 0, ""},
		{"debian: same ABI, package rebuilt", Apt, Uname{"6.1.0-15-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.64-1 (2023-11-30)"},
			debianTwo, "6.1.0-15-amd64", 1, "build 6.1.64-1, its package linux-image-6.1.0-15-amd64 is now 6.1.66-1"},
		{"a custom kernel newer than all", Apt, Uname{"6.18.44-fc-v769", "#1 SMP"}, debianTwo, "6.1.0-15-amd64", 0, ""},
		{"no kernel installed", Apt, Uname{"6.18.44-fc-v769", "#1 SMP"}, nil, "", 0, ""},
		{"boot only", Apt, Uname{"6.1.0-13-amd64", ""}, []Kernel{{Release: "6.1.0-13-amd64"}, {Release: "6.1.0-15-amd64"}},
			"6.1.0-15-amd64", 1, "older"},
		{"fedora: newer kernel-core", Dnf, Uname{"6.5.6-300.fc39.x86_64", ""},
			[]Kernel{{"6.5.6-300.fc39.x86_64", "kernel-core", "6.5.6-300.fc39"}, {"6.6.2-201.fc39.x86_64", "kernel-core", "6.6.2-201.fc39"}},
			"6.6.2-201.fc39.x86_64", 1, "older than the newest installed kernel 6.6.2-201.fc39.x86_64"},
		{"fedora: running the newest", Dnf, Uname{"6.6.2-201.fc39.x86_64", ""},
			[]Kernel{{"6.5.6-300.fc39.x86_64", "kernel-core", "6.5.6-300.fc39"}, {"6.6.2-201.fc39.x86_64", "kernel-core", "6.6.2-201.fc39"}},
			"6.6.2-201.fc39.x86_64", 0, ""},
	}
	for _, tt := range tests {
		newest, reasons := kernelReasons(tt.b, tt.running, tt.ks)
		if newest != tt.wantNewest || len(reasons) != tt.wantKinds {
			t.Errorf("%s: newest %q, reasons %v; want %q and %d reasons", tt.name, newest, reasons, tt.wantNewest, tt.wantKinds)
			continue
		}
		for _, r := range reasons {
			if r.Kind != ReasonNewerKernel || !strings.Contains(r.Detail, tt.wantIn) {
				t.Errorf("%s: reason %+v, want %s containing %q", tt.name, r, ReasonNewerKernel, tt.wantIn)
			}
		}
	}
}

func TestMergeKernels(t *testing.T) {
	pkg := []Kernel{{"6.1.0-13-amd64", "linux-image-6.1.0-13-amd64", "6.1.55-1"}}
	boot := []Kernel{{Release: "6.1.0-13-amd64"}, {Release: "6.1.0-99-custom"}}
	got := mergeKernels(boot, pkg)
	want := []Kernel{pkg[0], {Release: "6.1.0-99-custom"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
