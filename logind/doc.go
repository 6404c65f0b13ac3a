// Package logind is autopod's client for systemd-logind
// (org.freedesktop.login1) and for the one service-manager call logind
// lacks a guarantee for, a kexec into a loaded kernel
// (org.freedesktop.systemd1). The agent uses it to see who blocks a
// reboot, to hold its own inhibitor lock while it migrates pods away, and
// to reboot once the host is empty.
//
// The caller owns the *dbus.Conn (normally the system bus) and its
// lifetime. Every call carries a deadline: the caller's, bounded by
// Options.CallTimeout.
//
// # What the systemd versions offer
//
// Checked against systemd 252.39 (Debian 12, the strings of
// /lib/systemd/systemd-logind, libsystemd-core-252.so and systemctl) and
// systemd 257.13 (Debian 13, the introspection data of the running
// daemons in a booted container, kept in testdata/):
//
//   - ListInhibitors() -> a(ssssuu), Inhibit(ssss) -> h, Reboot(b),
//     RebootWithFlags(t), CanReboot() -> s and the PrepareForShutdown(b)
//     signal: both versions.
//   - Inhibitor modes: "block" and "delay" in both; "block-weak" only in
//     257 (it adds the BlockWeakInhibited property; 252's logind rejects it
//     with "Invalid mode specification"). Blockers reports block-weak locks
//     too, because they still stop an unprivileged reboot.
//   - RebootWithFlags flags: 0x01 (SD_LOGIND_ROOT_CHECK_INHIBITORS) and
//     0x02 (SD_LOGIND_KEXEC_REBOOT) in both; 252's logind carries the
//     error text "Reboot via kexec is only applicable with reboot
//     operations" and reads /sys/kernel/kexec_loaded. With 0x02 logind
//     starts kexec.target when a kexec kernel is loaded and otherwise
//     reboots normally, without saying so. 257 adds 0x04 and 0x08
//     (soft-reboot) and 0x10 (SD_LOGIND_SKIP_INHIBITORS), unused here.
//   - PrepareForShutdownWithMetadata(ba{sv}): 257 only; not used.
//   - org.freedesktop.systemd1.Manager: StartUnit(ss) -> o and KExec() in
//     both; SoftReboot(s) in 257 only.
//
// # Inhibitors and root
//
// Whether a block lock stops root changed in 257 (org.freedesktop.login1(5)
// of 257: "Since systemd version 257 active inhibitors are honoured by
// default for privileged users too"):
//
//   - 252: Reboot from root (the agent) goes through every block lock.
//     Only RebootWithFlags(FlagCheckInhibitors) is refused while one is
//     held ("Access denied to root due to active block inhibitor").
//   - 257: block locks stop root too; block-weak locks stop root only
//     with FlagCheckInhibitors.
//
// So RebootWithFlags(FlagCheckInhibitors) behaves the same on both, and
// Blockers tells an operator who is in the way. Delay locks are honoured
// by every version, up to logind's InhibitDelayMaxSec (5 s by default).
//
// KExec goes straight to the service manager: StartUnit("kexec.target",
// "replace-irreversibly"), the job `systemctl kexec` queues when it does
// not go through logind. No inhibitor is consulted and no
// PrepareForShutdown signal is sent. RebootWithFlags(FlagKExec) is the
// route through logind; it reboots normally when no kexec kernel is
// loaded.
package logind
