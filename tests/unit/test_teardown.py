"""Teardown off the request path.  The link reaper on a stand-in netlink socket: what it deletes, and that nobody
waits forever on it when the kernel refuses a deletion or its socket cannot be opened.  And `side_by_side`, which
removes a network's chains and links together."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from vxlanpy.dataplane.base import side_by_side
from vxlanpy.dataplane.reaper import DELETING_GROUP, LinkReaper
from vxlanpy.errors import DataplaneError


class StandInSocket:
    """Records each group deletion (answered `group_answer`) and each batch of `delete_links` (refusing the
    indexes in `refuse` with their errno)."""

    def __init__(self, group_answer: int = 0, refuse: dict[int, int] | None = None) -> None:
        self.groups: list[int] = []
        self.group_answer = group_answer
        self.batches: list[list[int]] = []
        self.refuse = refuse or {}
        self.closed = False

    def delete_group(self, group: int) -> int:
        self.groups.append(group)
        return self.group_answer

    def delete_links(self, indexes: list[int]) -> dict[int, int]:
        self.batches.append(sorted(indexes))
        return {index: code for index, code in self.refuse.items() if index in indexes}

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
    assert raw.batches == [[7, 8]]
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


def test_side_by_side_runs_both_and_raises_what_failed() -> None:
    done: list[str] = []

    def fails(name: str) -> None:
        done.append(name)
        raise DataplaneError(f"{name} failed")

    side_by_side(lambda: done.append("aside"), lambda: done.append("here"))
    assert sorted(done) == ["aside", "here"]
    for failing in ("aside", "here"):
        done.clear()
        actions = {name: (lambda name=name: fails(name)) if name == failing else (lambda name=name: done.append(name))
                   for name in ("aside", "here")}  # fmt: skip
        with pytest.raises(DataplaneError, match=f"{failing} failed"):
            side_by_side(actions["aside"], actions["here"])
        assert sorted(done) == ["aside", "here"], "one failing must not skip the other"


def test_side_by_side_runs_aside_on_another_thread() -> None:
    threads: list[int] = []
    side_by_side(lambda: threads.append(threading.get_ident()), lambda: threads.append(threading.get_ident()))
    assert len(set(threads)) == 2
