# autopod.py - dnf 4 plugin: before dnf or dnf-automatic changes packages on this
# host, ask the autopod agent to move the host's pods to a peer, and wait for it.
#
# The plugin only reports: it sends the transaction to `autopodctl hook
# dnf-pre-transaction` and aborts the transaction when that command fails.
# Deciding what to do (which packages matter, waiting for the evacuation, what to
# do when the agent cannot be reached) is autopodctl's; see the Go package
# github.com/autopod/autopod/hooks, which defines the line format below and reads
# it (ParseDnfLines, FormatDnfLine).
#
# The hooks:
#   pre_transaction  after dnf downloaded and test-ran the transaction, right
#                    before rpm changes anything (and after the user said yes;
#                    resolved() would come before the question). One line per
#                    package on autopodctl's stdin:
#                        NAME EPOCH:VERSION-RELEASE.ARCH ACTION[ EPOCH:VERSION-RELEASE.ARCH]
#                    ACTION is install, upgrade, downgrade, reinstall or remove;
#                    the last field, for upgrade, downgrade and reinstall, is the
#                    installed package being replaced. Epoch is always written
#                    (0 when the package has none). autopodctl's output is shown
#                    as it comes (it says what it waits for); a non-zero exit
#                    raises dnf.exceptions.Error, and dnf stops before rpm runs.
#   transaction      after rpm finished: `autopodctl hook dnf-post-transaction`,
#                    or, when rpm failed on some packages (a scriptlet failed: dnf
#                    then says "Transaction failed", after this hook), with
#                    --failed and those packages on stdin, in the format above.
#   (exit)           when the transaction was announced but transaction() never
#                    ran (rpm could not run the transaction, dnf was interrupted),
#                    at dnf's exit: `autopodctl hook dnf-post-transaction --failed`
#                    with nothing on stdin, so that the agent brings the pods back
#                    instead of waiting for its timeout.
#
# Configuration: /etc/dnf/plugins/autopod.conf ([main] enabled, autopodctl,
# host_root, timeout). Python 3.6 compatible (RHEL 8's dnf).

from __future__ import absolute_import, print_function, unicode_literals

import atexit
import logging
import os
import subprocess
import sys
import threading

import dnf
import dnf.exceptions
import dnf.transaction
import libdnf.transaction

logger = logging.getLogger('dnf.plugin')

DEFAULT_AUTOPODCTL = '/usr/bin/autopodctl'

# What each transaction item becomes. The items that dnf pairs with an upgrade,
# downgrade or reinstall (UPGRADED, DOWNGRADED, REINSTALLED) are not lines of
# their own: they are the last field of the line of the package replacing them.
_ACTIONS = {
    dnf.transaction.PKG_INSTALL: 'install',
    dnf.transaction.PKG_OBSOLETE: 'install',  # a new package, obsoleting others
    dnf.transaction.PKG_UPGRADE: 'upgrade',
    dnf.transaction.PKG_DOWNGRADE: 'downgrade',
    dnf.transaction.PKG_REINSTALL: 'reinstall',
    dnf.transaction.PKG_REMOVE: 'remove',
    dnf.transaction.PKG_OBSOLETED: 'remove',
}
_REPLACED = {
    dnf.transaction.PKG_UPGRADE: dnf.transaction.PKG_UPGRADED,
    dnf.transaction.PKG_DOWNGRADE: dnf.transaction.PKG_DOWNGRADED,
    dnf.transaction.PKG_REINSTALL: dnf.transaction.PKG_REINSTALLED,
}


def _evra(item):
    return '%s:%s-%s.%s' % (item.epoch or 0, item.version, item.release, item.arch)


def transaction_lines(items):
    """The lines for autopodctl, in dnf's order, from transaction items (anything
    with name, epoch, version, release, arch and action)."""
    items = list(items)
    # The replaced packages, to pair each with its replacement: same name and
    # arch first (multilib), then same name (an arch change, e.g. to noarch).
    replaced = {}
    for item in items:
        if item.action in _REPLACED.values():
            replaced.setdefault((item.action, item.name), []).append(item)

    def take(action, item):
        cands = replaced.get((_REPLACED[action], item.name), [])
        for same_arch in (True, False):
            for i, old in enumerate(cands):
                if not same_arch or old.arch == item.arch:
                    return cands.pop(i)
        return None

    lines = []
    for item in items:
        action = _ACTIONS.get(item.action)
        if action is None:
            continue
        line = '%s %s %s' % (item.name, _evra(item), action)
        if item.action in _REPLACED:
            old = take(item.action, item)
            if old is not None:
                line += ' ' + _evra(old)
        lines.append(line)
    # A replaced package nothing claimed still leaves the system.
    for cands in replaced.values():
        for old in cands:
            lines.append('%s %s remove' % (old.name, _evra(old)))
    return lines


class Autopod(dnf.Plugin):
    name = 'autopod'

    def __init__(self, base, cli):
        super(Autopod, self).__init__(base, cli)
        self.autopodctl = DEFAULT_AUTOPODCTL
        self.host_root = '/'
        self.timeout = 0
        self._announced = False
        self._ended = False

    def config(self):
        conf = self.read_config(self.base.conf)
        if conf.has_section('main'):
            if conf.has_option('main', 'autopodctl'):
                self.autopodctl = conf.get('main', 'autopodctl')
            if conf.has_option('main', 'host_root'):
                self.host_root = conf.get('main', 'host_root')
            if conf.has_option('main', 'timeout'):
                try:
                    self.timeout = int(conf.get('main', 'timeout'))
                except ValueError:
                    raise dnf.exceptions.ConfigError(
                        'autopod: timeout in autopod.conf must be a number of seconds, not %r'
                        % conf.get('main', 'timeout'))

    def _this_host(self):
        # dnf --installroot=DIR (image builds, containers) does not change this host.
        root = os.path.realpath(self.base.conf.installroot or '/')
        return root == os.path.realpath(self.host_root)

    def _run(self, args, stdin=''):
        """Runs autopodctl hook ARGS, shows its output as it comes, and returns its
        exit code and last line of output; None when autopodctl is not installed."""
        if not os.path.exists(self.autopodctl):
            return None, ''
        cmd = [self.autopodctl, 'hook'] + args
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, universal_newlines=True,
                                    close_fds=True)
        except OSError as e:
            raise dnf.exceptions.Error('autopod: cannot run %s: %s' % (' '.join(cmd), e))
        timer = None
        if self.timeout > 0:
            timer = threading.Timer(self.timeout, proc.kill)
            timer.start()
        last = ''
        try:
            try:
                proc.stdin.write(stdin)
                proc.stdin.close()
            except (IOError, OSError):
                pass  # it exited without reading: its exit code says why
            for line in proc.stdout:
                sys.stderr.write(line)
                sys.stderr.flush()
                if line.strip():
                    last = line.strip()
            rc = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
        return rc, last

    def pre_transaction(self):
        if not self._this_host():
            logger.debug('autopod: installroot %s is not this host, not asking autopod',
                         self.base.conf.installroot)
            return
        lines = transaction_lines(self.base.transaction)
        if not lines:
            return
        rc, last = self._run(['dnf-pre-transaction'], ''.join(l + '\n' for l in lines))
        if rc is None:
            logger.warning('autopod: %s is not installed; not asking autopod to move the pods',
                           self.autopodctl)
            return
        if rc != 0:
            raise dnf.exceptions.Error(
                'autopod: the transaction was stopped before any package changed '
                '(autopodctl hook dnf-pre-transaction exited with %s): %s' % (rc, last))
        self._announced = True
        atexit.register(self._exit)

    def transaction(self):
        if self._announced and not self._ended:
            self._ended = True
            failed = [item for item in self.base.transaction
                      if item.state == libdnf.transaction.TransactionItemState_ERROR]
            if failed:
                self._post(['--failed'], ''.join(l + '\n' for l in transaction_lines(failed)))
            else:
                self._post([])

    def _exit(self):
        if self._announced and not self._ended:
            self._ended = True
            self._post(['--failed'])

    def _post(self, extra, stdin=''):
        try:
            rc, last = self._run(['dnf-post-transaction'] + extra, stdin)
        except dnf.exceptions.Error as e:
            logger.warning('%s', e)
            return
        if rc not in (None, 0):
            logger.warning('autopod: autopodctl hook dnf-post-transaction exited with %s: %s', rc, last)
