#!/usr/bin/env bash
# podman-setup.sh — Podman 4.3 (Debian 12) set up for autopod's Podman
# benchmark (test/system/bench_podman_test.go, run by `make bench` only,
# never by `make test` or `make deps`).
#
#   scripts/podman-setup.sh [--no-smoke]
#
# Idempotent: a second run checks and returns in about a second. It
#   * installs podman, runc, conmon and the CNI plugins with apt (no
#     recommends: no crun, buildah, slirp4netns, fuse-overlayfs);
#   * writes a PRIVATE configuration under $AUTOPOD_PODMAN_DIR (default
#     /var/lib/autopod-bench/podman): containers.conf, storage.conf,
#     registries.conf, a CNI config directory, an image store, and a
#     wrapper `podman` there that runs /usr/bin/podman with that
#     configuration; /etc/containers, /etc/cni and /var/lib/containers are
#     neither read (except the packaged /etc/containers/policy.json, which
#     has no override in Podman 4.3 and only `podman import` consults) nor
#     written;
#   * builds the image localhost/autopod-bench/redis:<redis-server's Debian
#     version> with `podman import` from a minimal root holding the host's
#     /usr/bin/redis-server (Debian's redis-server/redis-tools) and the
#     libraries it links, in a tarball with fixed owners and dates;
#   * checks once per combination of versions and configuration that a
#     container of that image checkpoints and restores (the smoke test).
# On success the last lines of stdout are `podman=<wrapper>`, `image=<name>`
# and `netconf=<CNI config directory>`; everything else goes to stderr.
#
# The conditions Podman 4.3 needs on these machines
# (../shared/notes/criu-on-these-machines.md):
#   * runc, not crun: Debian 12's crun refuses cgroup v1/hybrid hosts
#     ("cgroups in hybrid mode not supported") and is built without CRIU;
#   * CRIU >= 4 found first on the PATH of podman, conmon and runc
#     (conmon_env_vars): Debian's /usr/sbin/criu 3.17 fails on this kernel;
#     CRIU comes from `make deps` ($CRIU_PREFIX, default /opt/autopod-criu);
#   * ulimits nofile=20000:20000 and nproc=4096:4096 (default_ulimits): root
#     here lacks CAP_SYS_RESOURCE, so runc's defaults above the hard limits
#     are refused by setrlimit;
#   * cgroupfs and file events: PID 1 is not systemd;
#   * iptables installed: runc picks no CRIU network lock, so CRIU takes its
#     default, iptables rules inside the container's network namespace;
#   * no registry is reachable: the image is imported from local files.
set -euo pipefail

PODMAN_DIR=${AUTOPOD_PODMAN_DIR:-/var/lib/autopod-bench/podman}
RUN_DIR=${AUTOPOD_PODMAN_RUNDIR:-/run/autopod-bench-podman}
CRIU_PREFIX=${CRIU_PREFIX:-/opt/autopod-criu}
CRIU_MIN=40000
smoke=1
log() { printf 'podman-setup: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

while [ $# -gt 0 ]; do
  case $1 in
    --no-smoke) smoke=0; shift ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: podman here is rootful (CRIU checkpointing needs root)"
export PATH=$CRIU_PREFIX/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# --- packages ---------------------------------------------------------------
# iptables: runc does not choose CRIU's network lock, so CRIU takes its default,
# iptables rules inside the container's network namespace (not the host's).
APT_PKGS=(podman runc conmon containernetworking-plugins golang-github-containers-common
  iptables redis-server redis-tools tar iproute2)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing with apt: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    die "apt-get install ${missing[*]} failed"
  fi
fi
for b in /usr/bin/podman /usr/sbin/runc /usr/bin/conmon /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/tuning /usr/sbin/iptables-restore; do
  [ -x "$b" ] || die "$b missing after installing ${APT_PKGS[*]}"
done
podman_version=$(/usr/bin/podman --version | awk '{print $3}')
case $podman_version in
  4.*) ;;
  *) log "warning: written and measured for Podman 4.3 (Debian 12); this is $podman_version" ;;
esac

# --- CRIU -------------------------------------------------------------------
criu=$CRIU_PREFIX/sbin/criu
[ -x "$criu" ] || die "no CRIU at $criu: run \`make deps\` (scripts/deps.sh builds CRIU 4 there; Debian 12's /usr/sbin/criu 3.17 fails on this kernel)"
criu_version=$("$criu" --version 2>/dev/null | sed -n 's/^Version: *//p')
IFS=. read -r a b c <<<"${criu_version:-0.0}"
[ $((a * 10000 + b * 100 + ${c:-0})) -ge $CRIU_MIN ] || die "$criu is version '${criu_version:-?}'; Podman's checkpoints need CRIU >= 4 here"
"$criu" check >/dev/null 2>&1 || die "\`$criu check\` fails on this kernel: $("$criu" check 2>&1 | tail -3)"
[ "$(command -v criu)" = "$criu" ] || die "PATH does not find $criu first"

# --- private configuration --------------------------------------------------
mkdir -p "$PODMAN_DIR"/{storage,cni,events,volumes,tmp} "$RUN_DIR"
chmod 0700 "$PODMAN_DIR"
conmon_path="PATH=$PATH"

# put FILE writes stdin to FILE unless FILE already holds exactly that.
put() {
  local f=$1 tmp
  tmp=$(mktemp "$f.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$f"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$f"
    log "wrote $f"
  fi
}

put "$PODMAN_DIR/containers.conf" <<CONF
# Written by autopod's scripts/podman-setup.sh for its Podman benchmark;
# read through CONTAINERS_CONF (see ./podman), never from /etc/containers.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
# Debian's podman does not ship catatonit, and the bench's containers need no init.
init = false

[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "$PODMAN_DIR/cni"
default_network = "autopod-bench-default"
default_subnet = "10.94.0.0/24"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_DIR/events/events.log"
conmon_env_vars = ["$conmon_path"]
tmp_dir = "$RUN_DIR/libpod"
static_dir = "$PODMAN_DIR/storage/libpod"
volume_path = "$PODMAN_DIR/volumes"
image_default_transport = "containers-storage:"

[engine.runtimes]
runc = ["/usr/sbin/runc", "/usr/bin/runc"]
CONF

put "$PODMAN_DIR/storage.conf" <<CONF
# Written by autopod's scripts/podman-setup.sh; read through CONTAINERS_STORAGE_CONF.
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$RUN_DIR/storage"
CONF

put "$PODMAN_DIR/registries.conf" <<'CONF'
# Written by autopod's scripts/podman-setup.sh: no registry is reachable
# from these machines, and the benchmark must never pull.
unqualified-search-registries = []
short-name-mode = "disabled"
CONF

put "$PODMAN_DIR/podman" <<WRAP
#!/bin/sh
# Written by autopod's scripts/podman-setup.sh: podman with the benchmark's
# private configuration, CRIU $criu_version from $CRIU_PREFIX first on the PATH.
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
export CONTAINERS_REGISTRIES_CONF=$PODMAN_DIR/registries.conf
export PATH=$PATH
exec /usr/bin/podman "\$@"
WRAP
chmod 0755 "$PODMAN_DIR/podman"
pm=$PODMAN_DIR/podman

info=$("$pm" info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} {{.Store.GraphRoot}} {{.Host.NetworkBackend}}' 2>&1) ||
  die "\`$pm info\` fails: $info"
read -r rt cgm groot netb <<<"$info"
[ "$rt" = runc ] || die "podman uses runtime '$rt', not runc (from $PODMAN_DIR/containers.conf)"
[ "$cgm" = cgroupfs ] || die "podman uses cgroup manager '$cgm', not cgroupfs"
[ "$groot" = "$PODMAN_DIR/storage" ] || die "podman's image store is '$groot', not the private $PODMAN_DIR/storage"
[ "$netb" = cni ] || die "podman's network backend is '$netb', not cni"

# --- the redis image --------------------------------------------------------
redis_deb=$(dpkg-query -W -f='${Version}' redis-server)
tag=${redis_deb#*:}
tag=${tag//[^A-Za-z0-9_.-]/_}
image=localhost/autopod-bench/redis:$tag
if ! "$pm" image exists "$image"; then
  root=$(mktemp -d "$PODMAN_DIR/tmp/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{usr/bin,etc,data,tmp,proc,sys,dev,run}
  chmod 1777 "$root/tmp"
  # /usr/bin/redis-server is a symlink to redis-check-rdb (redis-tools): copy the binary.
  cp -L /usr/bin/redis-server "$root/usr/bin/redis-server"
  # The libraries it links and the dynamic loader, at their own paths.
  libs=$(ldd /usr/bin/redis-server | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
  [ -n "$libs" ] || die "ldd /usr/bin/redis-server listed no libraries"
  for l in $libs; do
    mkdir -p "$root$(dirname "$l")"
    cp -L "$l" "$root$l"
  done
  # Debian 12 is merged-/usr: /lib64 and /lib are symlinks into /usr.
  if [ -L /lib64 ] && [ -L /lib ]; then
    for d in lib lib64; do
      if [ -d "$root/$d" ] && [ ! -L "$root/$d" ]; then
        mkdir -p "$root/usr/$d"
        cp -a "$root/$d/." "$root/usr/$d/"
        rm -rf "${root:?}/$d"
      fi
      ln -sfn "usr/$d" "$root/$d"
    done
  fi
  printf 'root:x:0:0:root:/root:/usr/bin/redis-server\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  tarball=$PODMAN_DIR/tmp/redis-rootfs-$tag.tar
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$tarball" .
  rm -rf "$root"
  trap - EXIT
  log "importing $image from $tarball ($(du -h "$tarball" | cut -f1), sha256 $(sha256sum "$tarball" | cut -c1-16)…)"
  out=$("$pm" import --change 'CMD ["/usr/bin/redis-server"]' --change 'WORKDIR /data' \
    --message "redis-server $redis_deb from the host's Debian packages (scripts/podman-setup.sh)" \
    "$tarball" "$image" 2>&1) || die "podman import failed: $out"
  rm -f "$tarball"
fi

# --- smoke test: a container of the image checkpoints and restores ----------
stamp_key=$(printf '%s\n' "$podman_version" "$(/usr/sbin/runc --version | head -1)" "$criu_version" "$image" |
  cat - "$PODMAN_DIR/containers.conf" "$PODMAN_DIR/storage.conf" | sha256sum | cut -c1-32)
stamp=$PODMAN_DIR/smoke-ok
if [ "$smoke" -eq 1 ] && [ "$(cat "$stamp" 2>/dev/null)" != "$stamp_key" ]; then
  name=autopod-bench-smoke
  "$pm" rm -f -t 0 "$name" >/dev/null 2>&1 || true
  cleanup_smoke() { "$pm" rm -f -t 0 "$name" >/dev/null 2>&1 || true; }
  trap cleanup_smoke EXIT
  log "smoke test: run, checkpoint and restore a redis container (once per configuration)"
  out=$("$pm" run -d --name "$name" --network none "$image" \
    /usr/bin/redis-server --port 0 --unixsocket /tmp/redis.sock --save "" 2>&1) ||
    die "podman run failed (runc, ulimits, cgroups?): $out"
  sleep 0.5
  out=$("$pm" container checkpoint "$name" 2>&1) ||
    die "podman container checkpoint failed: $out$(tail -5 "$PODMAN_DIR"/storage/overlay-containers/*/userdata/dump.log 2>/dev/null)"
  out=$("$pm" container restore "$name" 2>&1) ||
    die "podman container restore failed: $out$(tail -5 "$PODMAN_DIR"/storage/overlay-containers/*/userdata/restore.log 2>/dev/null)"
  state=$("$pm" inspect -f '{{.State.Status}}' "$name" 2>&1)
  [ "$state" = running ] || die "restored smoke container is '$state', not running"
  cleanup_smoke
  trap - EXIT
  echo "$stamp_key" >"$stamp"
  log "smoke test passed"
fi

log "ok: podman $podman_version, runc, CRIU $criu_version ($criu), store $PODMAN_DIR"
echo "podman=$pm"
echo "image=$image"
echo "netconf=$PODMAN_DIR/cni"
