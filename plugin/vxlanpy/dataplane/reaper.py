"""Deleting links off the request path.

The kernel takes about 20 ms to delete one link, veth pair, bridge or VXLAN device alike, whatever else it does
(measured on the 2-core benchmark machine: 18 ms for a veth pair that is up on a bridge, 19 ms for one already
down and detached, against 0.8 ms to take it down and 2.5 ms to create it): unregistering waits for RCU grace
periods.  DeleteEndpoint paid it once, DeleteNetwork once per device, all under the network's lock.

So `NetlinkLinks` retires a removed link at once, in one send: down (it leaves the bridge's forwarding, its
routes and its VXLAN socket go: 0.6 ms for a veth or a bridge; a VXLAN device's socket release waits for a
grace period itself), relabelled `DELETING_ALIAS`, moved to `DELETING_GROUP` and, for a network's devices,
renamed `vxd-<index>` (whoever lists the links by name sees them gone; an endpoint's name is never reused,
and a rename costs a grace period too).  It hands the link here by index; a thread of its own, on a netlink
socket of its own, deletes all that is queued with one request (the group): the links of many networks
removed at once share one unregistering.  Creating a link under a name one waiting here had first waits for
that deletion (`wait_for`): a VXLAN device made again right away for the same VNI would be refused while the
old one exists, down or not.

A crash in between leaves a down link that is vxlanpy's but no row's alias: reconciliation removes it at the next
start, as it would have removed the link of a row the crash kept.  The relabelling matters for a network's
devices: under their own alias, without their row, they would read as state the store lost, which
reconciliation keeps for `vxlanpy recover`.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import threading
from collections.abc import Callable, Collection

from ..models import LINK_ALIAS_PREFIX
from .rtnl import RawSocket

log = logging.getLogger(__name__)

DELETING_ALIAS = f"{LINK_ALIAS_PREFIX}deleting"  # a link on its way out: no row owns it any more
# The device group links on their way out are moved to: one request deletes them all, with one unregistering
# (its RCU grace periods) for the lot instead of one each.  An arbitrary number ("vxpd"), far from the small
# ones `ip link set group` users name in /etc/iproute2/group.
DELETING_GROUP = 0x76787064
DELETING_PREFIX = "vxd-"  # + the link's index: its name is free at once for whoever looks for it by name
SETTLE_SECONDS = 30.0  # at most, on close, for the deletions still queued
EXIT_SECONDS = 10.0  # at most, when the plugin exits without closing its links (a signal), likewise


class LinkReaper:
    """A queue of links to delete (index, name), emptied by one background thread."""

    def __init__(self, open_raw: Callable[[], RawSocket]) -> None:
        self._open_raw = open_raw  # a netlink socket in the links' namespace, opened on the reaper's thread
        self._pending: dict[int, str] = {}  # index -> name, in the order given
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def delete(self, links: dict[int, str]) -> None:
        """Queue the deletion of `links` (index -> the name it had), which the caller has retired."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the link reaper is closed")
            self._pending.update(links)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vxlanpy-reaper", daemon=True)
                self._thread.start()
                atexit.register(self._at_exit)  # a plugin told to stop does not leave its last links behind
            self._changed.notify_all()

    def pending(self) -> set[str]:
        """The names the links waiting here had."""
        with self._changed:
            return set(self._pending.values())

    def pending_indexes(self) -> set[int]:
        with self._changed:
            return set(self._pending)

    def wait_for(self, names: Collection[str]) -> None:
        """Return once no link called one of `names` waits for deletion here."""
        with self._changed:
            self._changed.wait_for(lambda: not set(names) & set(self._pending.values()))

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every queued deletion is done; False if `timeout` ran out first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = SETTLE_SECONDS) -> None:
        """Finish the queued deletions (for `timeout` at most: what is left, reconciliation removes) and stop."""
        atexit.unregister(self._at_exit)
        if not self.settle(timeout):
            log.warning("links still being deleted at shutdown: %s", ", ".join(sorted(self.pending())))
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=1.0)

    def _at_exit(self) -> None:
        if not self.settle(EXIT_SECONDS):
            log.warning("links left for reconciliation at exit: %s", ", ".join(sorted(self.pending())))

    def _run(self) -> None:
        raw: RawSocket | None = None
        try:
            raw = self._open_raw()
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._pending or self._closed)
                    if not self._pending:
                        return  # closed
                    batch = dict(self._pending)
                self._delete(raw, batch)
        except Exception:  # noqa: BLE001 - a thread has no caller to tell; what is left, reconciliation removes
            log.exception("the link reaper stopped; links left for reconciliation: %s", ", ".join(self.pending()))
            with self._changed:
                self._pending.clear()  # nobody is to wait for them any more
                self._thread = None
                self._changed.notify_all()
        finally:
            if raw is not None:
                raw.close()

    def _delete(self, raw: RawSocket, batch: dict[int, str]) -> None:
        try:
            code = raw.delete_group(DELETING_GROUP)
            # Not all ours (a device someone else put in the group that cannot be deleted): one by one.
            refused = raw.delete_links(list(batch)) if code not in (0, errno.ENODEV) else {}
        except OSError as error:
            refused = dict.fromkeys(batch, error.errno or errno.EIO)
        for index, code in refused.items():
            if code != errno.ENODEV:  # already gone: with the group, its veth peer, or reconciliation was first
                log.warning(
                    "cannot delete interface %s: %s; reconciliation removes it", batch[index], os.strerror(code)
                )
        with self._changed:
            for index in batch:
                self._pending.pop(index, None)
            self._changed.notify_all()
