// Package vm is the end-to-end tier: autopod installed from its .deb on
// real hosts, two qemu guests running Debian trixie with systemd, their
// distribution kernel and a private L2 link between them.
//
// Everything is behind the build tag e2e (run `sudo make e2e`): it needs
// root, qemu-system-x86 and qemu-utils, the Debian archive for the guest
// image (built once by scripts/vm-image.sh and cached under
// /var/cache/autopod-test/vm), and several minutes, since the guests run
// under TCG (see ../shared/notes/vm-testbed.md: KVM does not work for
// Debian kernels on our machines).
//
// The guests reach nothing off the machine (user-mode networking with
// restrict=on); the host reaches them by ssh on a forwarded loopback port,
// and they reach each other over a qemu UDP socket link on loopback.
package vm
