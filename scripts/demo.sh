#!/usr/bin/env bash
# demo.sh — autopod end to end on this machine, narrated.
#
# Runs the real agent on a private system-like D-Bus (this machine may have
# no system bus; the bus is configured exactly like the system bus plus
# autopod's policy file), defines a redis pod with its own IP address,
# fills it with data, holds one TCP connection to it, checkpoints it with
# CRIU, restores it, and shows that the data and the very same connection
# survived; then restarts the agent and shows the pod was never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
demo=${AUTOPOD_DEMO_DIR:-/var/tmp/autopod-demo}
criu=${AUTOPOD_CRIU:-/opt/autopod-criu/sbin/criu}
ip=10.77.0.10

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  set +e
  [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  if [ -n "${bus_pid:-}" ]; then
    # Stop the pod with a fresh agent so nothing is left behind.
    DBUS_SYSTEM_BUS_ADDRESS=$bus "$top/bin/autopod" --config "$demo/autopod.toml" >>"$demo/agent.log" 2>&1 &
    p=$!
    for _ in $(seq 50); do "$top/bin/autopodctl" --bus "$bus" status >/dev/null 2>&1 && break; sleep 0.1; done
    "$top/bin/autopodctl" --bus "$bus" stop cache >/dev/null 2>&1
    kill "$p" 2>/dev/null; wait "$p" 2>/dev/null
    kill "$bus_pid" 2>/dev/null
  fi
  exec 3<&- 2>/dev/null
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (sudo make demo)" >&2; exit 1; }
[ -x bin/autopod ] && [ -x bin/autopodctl ] || { echo "demo.sh: run 'make build' first" >&2; exit 1; }

rm -rf "$demo"
mkdir -p "$demo/pods"
cat >"$demo/autopod.toml" <<TOML
criu_path = "$criu"
pods_dir = "$demo/pods"
state_dir = "$demo/state"
log_dir = "$demo/log"
bridge = "autopod0"
bridge_address = "10.77.0.1/24"
peer_port = 17781

# The demo must never install this machine's pending updates.
[update]
mode = "notify"
TOML
cat >"$demo/pods/cache.toml" <<TOML
# A redis server in its own namespaces, reachable at its own address.
command = "/usr/bin/redis-server"
args = ["--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--enable-debug-command", "yes"]
workdir = "/tmp"
restart = "on-failure"
[network]
address = "$ip/24"
[limits]
memory = "1G"
pids = 256
TOML

say "A private system-like bus (this machine runs no system D-Bus)"
bus="unix:path=$demo/bus"
dbus-daemon --config-file="$top/test/dbus/system-bus.conf" --address="$bus" --nofork --nopidfile 2>"$demo/dbus-daemon.log" &
bus_pid=$!
for _ in $(seq 50); do [ -S "$demo/bus" ] && break; sleep 0.1; done
export DBUS_SYSTEM_BUS_ADDRESS=$bus
ctl() { run "$top/bin/autopodctl" "$@"; }
# The pod's processes as its own pid namespace numbers them.
cgdir() { for d in /sys/fs/cgroup/pids/autopod/cache /sys/fs/cgroup/autopod/cache; do [ -d "$d" ] && echo "$d" && return; done; }
inner_pids() {
  local d; d=$(cgdir) || return 0
  for p in $(cat "$d/cgroup.procs"); do
    printf '%s:%s ' "$(awk '/^NSpid/ {print $NF}' /proc/$p/status)" "$(cat /proc/$p/comm)"
  done | tr ' ' '\n' | sort -n | tr '\n' ' '
}

say "Start the agent (it reads $demo/pods and starts the pod)"
cat "$demo/pods/cache.toml"
"$top/bin/autopod" --config "$demo/autopod.toml" >>"$demo/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do "$top/bin/autopodctl" status >/dev/null 2>&1 && break; sleep 0.1; done
ctl status
ctl pods

say "Fill redis with 100 MB and open ONE TCP connection to the pod's address"
for _ in $(seq 100); do redis-cli -h $ip PING >/dev/null 2>&1 && break; sleep 0.1; done
run redis-cli -h $ip DEBUG POPULATE 100000 key 1000
exec 3<>/dev/tcp/$ip/6379
resp() { printf '%s\r\n' "$1" >&3; IFS= read -r -t 5 line <&3; echo "${line%$'\r'}"; }
printf 'on the held connection: PING -> %s\n' "$(resp PING)"
before=$(redis-cli -h $ip DEBUG DIGEST)
echo "DEBUG DIGEST: $before"
ss -tn dst $ip | sed -n 2p | awk '{print "connection:", $4, "->", $5}'
pids_before=$(inner_pids)
echo "inner pids (pid:command): $pids_before"

say "Checkpoint the pod with CRIU (it stops; its image is self-describing)"
ctl checkpoint cache
ctl pods
dir=$("$top/bin/autopodctl" --json pod cache | sed -n 's/.*"checkpoint": *"\([^"]*\)".*/\1/p')
echo "image directory: $dir"
du -sh "$dir"
head -c 600 "$dir/manifest.json"; echo " ..."

say "Restore it: same address, same memory, same inner pids, same connection"
ctl restore cache
ctl pods
printf 'on the SAME held connection: PING -> %s\n' "$(resp PING)"
after=$(redis-cli -h $ip DEBUG DIGEST)
echo "DEBUG DIGEST: $after"
[ "$before" = "$after" ] && echo "data identical" || { echo "DATA DIFFERS"; exit 1; }
pids_after=$(inner_pids)
echo "inner pids (pid:command): $pids_after"
[ "$pids_before" = "$pids_after" ] && echo "inner pids identical" || { echo "INNER PIDS DIFFER"; exit 1; }

say "Restart the agent: the pod keeps running and is re-adopted"
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true
printf 'agent stopped; PING on the held connection -> %s\n' "$(resp PING)"
"$top/bin/autopod" --config "$demo/autopod.toml" >>"$demo/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do "$top/bin/autopodctl" status >/dev/null 2>&1 && break; sleep 0.1; done
ctl pods

say "Stop the pod: no process, veth or cgroup is left"
ctl stop cache
ctl pods
ip link show ap-cache >/dev/null 2>&1 && { echo "veth left!"; exit 1; } || echo "veth ap-cache: gone"
[ -z "$(cgdir)" ] && echo "cgroups of cache: gone" || { echo "cgroup left: $(cgdir)"; exit 1; }
echo
echo "Part 1 done. Agent log: $demo/agent.log; pod log: $demo/log/cache.log"
cleanup
trap - EXIT
bus_pid= agent_pid=

printf '\n\033[1m==== Part 2: live migration between two hosts ====\033[0m\n'
"$top/scripts/demo-migrate.sh"
