#!/usr/bin/env bash
# test.sh TIER — run one test tier, or "all" of them, printing how long each
# took and a summary line. Tiers:
#   unit    go vet + go test ./... (no privileges needed) + a short fuzz run
#   units   systemd-analyze verify on units/ (go test ./units/)
#   root    real CRIU, namespaces, cgroups, redis; real apt, dpkg, dnf and rpm
#           against local repositories (go test -tags roottest ./pods/ ./updater/ ./hooks/)
#   packaging  make deb/rpm from a clean copy, lintian, rpm -qp/--root, the .deb
#           installed, activated, upgraded, removed and purged in a Debian
#           root booted with systemd-nspawn (go test -tags roottest ./test/packaging/)
#   system  the real agent on a private dbus-daemon, driven by autopodctl and
#           busctl; migration between namespace hosts (go test -tags roottest ./test/system/)
#   e2e     two qemu guests with systemd and the .deb: a pod moved with each
#           strategy, then a real kernel update, reboot and return
#           (go test -tags e2e ./test/vm/; its phase table also goes to
#           build/e2e-report.md)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "tier $1 needs root (namespaces, cgroups, CRIU): run 'sudo make test'" >&2
    return 1
  fi
}

tier_unit() {
  go vet ./... && go vet -tags roottest ./... && go test -count=1 ./... &&
    go test -count=1 -run XXX -fuzz FuzzParseSpec -fuzztime 10s ./pods/
}
tier_units() { go test -count=1 -v ./units/; }
tier_root() { need_root root && go test -count=1 -tags roottest -timeout 15m -run '^TestRoot' -v ./pods/ ./updater/ ./hooks/; }
tier_packaging() { need_root packaging && go test -count=1 -tags roottest -timeout 20m -v ./test/packaging/; }
tier_system() { need_root system && go test -count=1 -tags roottest -timeout 20m -v ./test/system/; }
tier_e2e() {
  need_root e2e && AUTOPOD_E2E_REPORT=$PWD/build/e2e-report.md go test -count=1 -tags e2e -timeout 45m -v ./test/vm/
}

tiers=("$@")
[ "${tiers[0]:-all}" = all ] && tiers=(unit units root system packaging e2e)
declare -A result
declare -A took
failed=0
for t in "${tiers[@]}"; do
  echo "=== tier $t"
  start=$(date +%s%N)
  if "tier_$t"; then result[$t]=ok; else result[$t]=FAILED; failed=$((failed + 1)); fi
  took[$t]=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  echo "=== tier $t: ${result[$t]} in ${took[$t]} s"
done
echo
echo "tier      result  seconds"
for t in "${tiers[@]}"; do printf '%-9s %-7s %s\n' "$t" "${result[$t]}" "${took[$t]}"; done
passed=$(( ${#tiers[@]} - failed ))
echo "tiers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
