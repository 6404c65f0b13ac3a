// Package hooks is the package-manager side of autopod's update cycle: when apt,
// apt-get, unattended-upgrades, dnf or dnf-automatic is about to install a new
// kernel, the hook asks the autopod agent to move this host's pods to a peer and
// waits until they are away; when the package manager has finished, it tells the
// agent, which then reboots the host and brings the pods back
// (docs/update-cycle.md, trigger "apt hook"). It parses what the package managers
// hand their hooks, decides, and talks to the agent through the Agent interface;
// autopodctl supplies the D-Bus implementation and the command line.
//
// # apt
//
// packaging/etc/apt/apt.conf.d/99autopod configures
//
//	DPkg::Pre-Install-Pkgs { "/usr/bin/autopodctl hook apt-pre-install || [ ! -e /usr/bin/autopodctl ]"; };
//	DPkg::Tools::Options::/usr/bin/autopodctl::Version "3";
//	DPkg::Post-Invoke { "/usr/bin/autopodctl hook apt-post-invoke || true"; };
//
// apt runs each command with /bin/sh -c before (Pre-Install-Pkgs) and after
// (Post-Invoke) every dpkg run, and stops when a Pre-Install-Pkgs command fails,
// before dpkg changes anything; the command's stderr reaches the operator. apt
// picks the protocol version by the command's first word only
// (DPkg::Tools::Options::<first word>::Version, apt.conf(5) and apt's
// RunScriptsWithPkgs; with apt 2.6 the first word gives version 3, and the whole
// command cannot even be written as a key: "Extra junk after value"). Version 3
// sends "VERSION 3", apt's whole configuration
// (%-encoded key=value lines, an empty line), then one line per dpkg step with the
// old and new version and arch, the direction and the action: the .deb to unpack,
// **CONFIGURE** or **REMOVE** (ParseAptHook reads versions 1 to 3). The
// configuration tells who runs apt (CommandLine::AsString: apt-get's command
// line, or /usr/bin/unattended-upgrade, which sets it) and where dpkg installs
// (DPkg::Options --root, DPkg::Chroot-Directory: AptHook.TargetRoot).
// Post-Invoke gets no input and runs whether dpkg succeeded or not (apt 2.6), so
// AptPostInvoke judges the run by dpkg's status file (ParseDpkgStatus): a kernel
// or boot-critical package that dpkg left half-configured makes the end "not ok"
// and the agent brings the pods back without rebooting.
//
// The "|| [ ! -e /usr/bin/autopodctl ]" keeps apt working when autopod is removed
// but not purged: 99autopod is a conffile and stays. It keeps autopodctl as the
// first word, so that the Version option stays autopod's own. The file is named
// 99autopod so that the hook runs after the other Pre-Install-Pkgs hooks
// (apt-listbugs, apt-listchanges, debconf's dpkg-preconfigure), which may still ask
// questions or stop apt: the pods move only once nothing else can stop the
// install. 99autopod-unattended-upgrades sets
// Unattended-Upgrade::Automatic-Reboot "false" (the key of unattended-upgrades
// 2.9, Debian 12), after 50unattended-upgrades and 52unattended-upgrades-local:
// autopod reboots.
//
// # dnf
//
// The dnf 4 plugin autopod (packaging/usr/lib/python3/dist-packages/dnf-plugins/
// autopod.py, configured by /etc/dnf/plugins/autopod.conf) runs in
// pre_transaction, after dnf downloaded and test-ran the transaction (and after
// the operator said yes; resolved() would come before the question), right before
// rpm runs. It writes one line per package on the stdin of
// `autopodctl hook dnf-pre-transaction` (ParseDnfLines, FormatDnfLine):
//
//	NAME EPOCH:VERSION-RELEASE.ARCH ACTION[ EPOCH:VERSION-RELEASE.ARCH]
//
// and raises dnf.exceptions.Error, which stops dnf before rpm runs, when the
// command fails. After the rpm transaction it runs `autopodctl hook
// dnf-post-transaction`, with --failed and the failed packages on stdin when rpm
// failed on some (dnf still calls transaction() then), and with --failed alone at
// dnf's exit when the announced transaction never ran (rpm could not start,
// another plugin stopped it, dnf was interrupted). It skips installroots other
// than host_root (image builds) and lets dnf work when autopodctl is missing.
// dnf-automatic loads the same plugin (base.init_plugins); where it has a reboot
// setting (newer dnf 4), keep "reboot = never": autopod reboots.
//
// # Decisions
//
// Pre-install (AptPreInstall, DnfPreTransaction), in this order:
//
//   - AUTOPOD_HOOK=skip in the environment: say so, let the install go on.
//   - Input that cannot be read: stop the install (a skipped line could be the
//     kernel), saying how to skip the hook.
//   - apt installs into another root, or runs in a chroot: not this host; go on.
//   - Nothing is unpacked (removals, configuring only): go on without asking.
//   - Otherwise the agent hears every package that is unpacked
//     (ExternalInstallBegin) and decides by its policy (updates = "kernel" or
//     "all"). If it needs nothing: go on, silently.
//   - The agent cannot be asked: with no system bus at all (ErrNoBus: an image
//     build, an installer) go on with a warning; when the packages include a
//     kernel (updater.ClassKernel) stop the install, saying why and how to go on
//     (start the agent, or AUTOPOD_HOOK=skip); without a kernel go on with a
//     warning. A kernel installed behind autopod's back would leave the pods on a
//     host that a later reboot takes down with them, while boot-critical updates
//     (libc, systemd) are security fixes a broken agent must not hold back, and the
//     agent's Detector sees any reboot they need. unattended-upgrades and
//     dnf-automatic try again on their next run.
//   - The agent starts a cycle: wait (WaitInstallReady, Options.Timeout, one hour
//     by default; the agent's evacuation_timeout and max_attempts normally end
//     it first), printing each state change. The pods away: go on. The agent gave
//     up, the timeout passed, or the hook was interrupted: tell the agent
//     (ExternalInstallEnd, not ok) so that it brings the pods back, and stop.
//
// Only the wait for the pods is long: announcing and ending are bounded by
// Options.CallTimeout (two minutes, D-Bus activation included), so a package
// that is not a kernel is never held longer than it takes to ask the agent.
// Post-install hooks (AptPostInvoke, DnfPostTransaction) never fail the package
// manager: problems are warnings.
//
// # What autopodctl does
//
// `autopodctl hook SUBCOMMAND` builds a Runner (NewRunner) with the D-Bus Agent,
// Stderr = os.Stderr, Skip = SkipRequested(os.Getenv) and a context cancelled by
// SIGINT, SIGTERM and SIGHUP, and calls
//
//	apt-pre-install               Runner.AptPreInstall(ctx, os.Stdin)
//	apt-post-invoke               Runner.AptPostInvoke(ctx)
//	dnf-pre-transaction           Runner.DnfPreTransaction(ctx, os.Stdin)
//	dnf-post-transaction          Runner.DnfPostTransaction(ctx, true, os.Stdin)
//	dnf-post-transaction --failed Runner.DnfPostTransaction(ctx, false, os.Stdin)
//
// with an optional --timeout (Options.Timeout). It exits 0 on nil and 1 on an
// error without printing it again: the Runner has told the operator. The hooks
// run under apt and dnf: no terminal (never prompt, no colours), a minimal PATH
// (DPkg::Path; run nothing through PATH), any locale, stdin read to its end (the
// Runner does). The D-Bus Agent returns errors wrapping ErrNoBus when the system
// bus socket is missing or refuses connections, and ErrAgentUnreachable for
// org.freedesktop.DBus.Error.ServiceUnknown, NameHasNoOwner, Spawn.* and
// timeouts; it gives every call a deadline.
//
// # What the agent must do
//
// DPkg::Post-Invoke ends one dpkg run, not apt's: unattended-upgrades installs in
// minimal steps, one dpkg run (each with both hooks) per step, and more steps may
// follow the kernel's. After ExternalInstallEnd the agent waits, before it
// reboots, until no process holds DpkgFrontendLock (LockHolder: apt-get and
// unattended-upgrades hold it for their whole run, and it names their pid); the
// same lock turning free without an ExternalInstallEnd means apt ended without
// its Post-Invoke. A not-ok ExternalInstallEnd while the cycle is still
// evacuating should stop the evacuation, as Cancel does.
package hooks
