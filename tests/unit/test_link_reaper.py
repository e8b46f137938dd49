"""The link reaper on a stand-in netlink socket: what it deletes, and that nobody waits forever on it when the
kernel refuses a deletion or its socket cannot be opened."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from vxlanpy.dataplane.reaper import DELETING_GROUP, LinkReaper


class StandInSocket:
    """Records each group deletion (answered `group_answer`) and each batch of `change_links` (refusing the
    indexes in `refuse` with their errno)."""

    def __init__(self, group_answer: int = 0, refuse: dict[int, int] | None = None) -> None:
        self.groups: list[int] = []
        self.group_answer = group_answer
        self.batches: list[dict[int, str | None]] = []
        self.refuse = refuse or {}
        self.closed = False

    def delete_group(self, group: int) -> int:
        self.groups.append(group)
        return self.group_answer

    def change_links(self, links: dict[int, str | None]) -> dict[int, int]:
        self.batches.append(dict(links))
        return {index: code for index, code in self.refuse.items() if index in links}

    def close(self) -> None:
        self.closed = True


def test_queued_links_are_deleted_with_their_group_and_waiters_released() -> None:
    raw = StandInSocket()
    reaper = LinkReaper(lambda: raw)  # type: ignore[arg-type, return-value]
    reaper.delete({7: "vxh-a", 8: "vxbr-1"})
    reaper.wait_for(["vxbr-1"])
    assert reaper.settle(timeout=30)
    assert raw.groups and set(raw.groups) == {DELETING_GROUP} and raw.batches == []
    assert reaper.pending() == set()
    reaper.close()
    assert raw.closed
    with pytest.raises(RuntimeError, match="closed"):
        reaper.delete({9: "vxh-b"})


def test_a_refused_group_is_deleted_link_by_link_and_a_refusal_waits_no_one(caplog: pytest.LogCaptureFixture) -> None:
    raw = StandInSocket(group_answer=errno.EOPNOTSUPP, refuse={7: errno.EBUSY, 8: errno.ENODEV})
    reaper = LinkReaper(lambda: raw)  # type: ignore[arg-type, return-value]
    reaper.delete({7: "vxh-a", 8: "vxh-b"})
    reaper.wait_for(["vxh-a", "vxh-b"])
    reaper.close()
    assert {index: alias for batch in raw.batches for index, alias in batch.items()} == {7: None, 8: None}
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [f"cannot delete interface vxh-a: {os.strerror(errno.EBUSY)}; reconciliation removes it"]


def test_a_socket_that_cannot_be_opened_releases_the_waiters_and_the_next_deletion_tries_again() -> None:
    attempts: list[str] = []
    raw = StandInSocket()
    opened = threading.Event()

    def open_raw() -> StandInSocket:
        attempts.append("open")
        if len(attempts) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        opened.set()
        return raw

    reaper = LinkReaper(open_raw)  # type: ignore[arg-type]
    reaper.delete({7: "vxh-a"})
    reaper.wait_for(["vxh-a"])  # returns: the link is left for reconciliation
    assert reaper.pending() == set()
    reaper.delete({8: "vxh-b"})
    assert reaper.settle(timeout=30) and opened.is_set()
    assert raw.groups == [DELETING_GROUP]
    reaper.close()
