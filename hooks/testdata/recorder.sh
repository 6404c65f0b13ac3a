#!/bin/sh
# recorder.sh — stands in for /usr/bin/autopodctl when apt or dnf runs the hooks in
# capture.sh and in the root tests. Each call is kept in $RECORD_DIR as
# NNN.args (the arguments, one a line), NNN.stdin (everything on stdin) and NNN.env
# (the variables apt and dnf set for hooks, and PATH).
#
# RECORD_FAIL=SUBCOMMAND makes the call whose second argument is SUBCOMMAND print
# "$RECORD_MESSAGE" on stderr and exit 3, as autopodctl does when it refuses.
# It uses only sh builtins and coreutils, with absolute paths: apt runs hooks with
# the PATH of DPkg::Path, dnf with its own.
set -eu
dir=${RECORD_DIR:?RECORD_DIR is not set}
n=$(/bin/ls "$dir" | /usr/bin/wc -l)
n=$(printf '%03d' $((n / 3 + 1)))
for a in "$@"; do printf '%s\n' "$a"; done >"$dir/$n.args"
/bin/cat >"$dir/$n.stdin"
{
  echo "APT_HOOK_INFO_FD=${APT_HOOK_INFO_FD-}"
  echo "PATH=${PATH-}"
  if [ -t 0 ] || [ -t 1 ] || [ -t 2 ]; then echo "tty=yes"; else echo "tty=no"; fi
} >"$dir/$n.env"
if [ "${RECORD_FAIL-}" = "${2-}" ]; then
  printf '%s\n' "${RECORD_MESSAGE:-recorder: refused}" >&2
  exit 3
fi
exit 0
