//go:build roottest

package packaging

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// upgradeSuffix makes the second .deb's version higher than the checkout's:
// 0.1.0 < 0.1.0+upgradetest.
const upgradeSuffix = "+upgradetest"

// builds are the packages built from the checkout.
type builds struct {
	version   string // debian/changelog's, e.g. "0.1.0"
	deb       string // autopod_VERSION_amd64.deb
	rpm       string // autopod-VERSION-1.x86_64.rpm
	debNext   string // the same sources as version+upgradeSuffix
	versionUp string
}

// buildEnv is the environment for make: Go from the PATH, else where
// `make deps` and this machine keep it.
func buildEnv() []string {
	env := os.Environ()
	path := os.Getenv("PATH") + ":/usr/local/go/bin:" + filepath.Join(runtime.GOROOT(), "bin") + ":/usr/sbin:/sbin"
	for i, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			env[i] = "PATH=" + path
			return env
		}
	}
	return append(env, "PATH="+path)
}

// cleanCheckout copies what a fresh clone would hold into dst: the tracked
// files plus new files that are not ignored (so that work not yet committed
// is tested as it will be committed), without build output or an existing
// vendor/ directory.
func cleanCheckout(t *testing.T, ctx context.Context, repo, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `set -e
if [ "$(git -C "$1" rev-parse --show-toplevel 2>/dev/null)" = "$1" ]; then
	cd "$1"
	git ls-files -z --cached --others --exclude-standard | tar --null --no-recursion --ignore-failed-read -T - -cf -
else
	cd "$1"
	tar --exclude=./bin --exclude=./build --exclude=./vendor --exclude=./.git -cf - .
fi | tar -xf - -C "$2"`
	run(t, ctx, "", nil, "sh", "-c", script, "sh", repo, dst)
}

// bumpChangelog adds an entry with version above the existing first one.
func bumpChangelog(t testing.TB, changelog, version string) {
	t.Helper()
	old, err := os.ReadFile(changelog)
	if err != nil {
		t.Fatal(err)
	}
	entry := fmt.Sprintf("autopod (%s) unstable; urgency=medium\n\n"+
		"  * The same sources under a higher version, for the upgrade test.\n\n"+
		" -- autopod maintainers <maintainers@users.noreply.r-seed-e1fe6c27.example>  %s\n\n",
		version, time.Now().UTC().Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	if err := os.WriteFile(changelog, append([]byte(entry), old...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// buildPackages builds the .deb and .rpm from a clean copy of the checkout
// with `make deb rpm`, then a second .deb of the same sources with a higher
// version, all under dir.
func buildPackages(t *testing.T, ctx context.Context, tm *timings, dir string) builds {
	t.Helper()
	done := tm.track("clean checkout")
	src := filepath.Join(dir, "src")
	cleanCheckout(t, ctx, repoRoot(t), src)
	var b builds
	b.version = changelogVersion(t, filepath.Join(src, "debian/changelog"))
	b.versionUp = b.version + upgradeSuffix
	srcUp := filepath.Join(dir, "src-upgrade")
	copyTree(t, src, srcUp)
	bumpChangelog(t, filepath.Join(srcUp, "debian/changelog"), b.versionUp)
	done()

	out := filepath.Join(dir, "out")
	done = tm.track("make deb (dpkg-buildpackage)")
	run(t, ctx, src, buildEnv(), "make", "deb", "PKGBUILD="+filepath.Join(dir, "pkg"), "PKGOUT="+out)
	done()
	done = tm.track("make rpm (rpmbuild)")
	run(t, ctx, src, buildEnv(), "make", "rpm", "PKGBUILD="+filepath.Join(dir, "pkg"), "PKGOUT="+out)
	done()
	done = tm.track("make deb, upgrade version")
	outUp := filepath.Join(dir, "out-upgrade")
	run(t, ctx, srcUp, buildEnv(), "make", "deb", "PKGBUILD="+filepath.Join(dir, "pkg-upgrade"), "PKGOUT="+outUp)
	done()

	arch := debArch(t, ctx)
	b.deb = filepath.Join(out, fmt.Sprintf("autopod_%s_%s.deb", b.version, arch))
	b.rpm = filepath.Join(out, fmt.Sprintf("autopod-%s-1.%s.rpm", b.version, rpmArch()))
	b.debNext = filepath.Join(outUp, fmt.Sprintf("autopod_%s_%s.deb", b.versionUp, arch))
	for _, p := range []string{b.deb, b.rpm, b.debNext} {
		if _, err := os.Stat(p); err != nil {
			entries, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "*"))
			t.Fatalf("expected package %s: %v (found %v)", p, err, entries)
		}
	}
	return b
}

func debArch(t testing.TB, ctx context.Context) string {
	return strings.TrimSpace(run(t, ctx, "", nil, "dpkg", "--print-architecture"))
}

func rpmArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}
