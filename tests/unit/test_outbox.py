"""Unit tests of sessions/outbox.py: the per-connection conflating outbox."""

from __future__ import annotations

import asyncio

from sessions.feeds import FeedState, FeedUpdate
from sessions.outbox import Outbox, SnapshotWanted, Work
from sessions.versions import Version


def _update(n: int, feed: str = "home") -> FeedUpdate:
    state = FeedState("u-1", feed, Version("ep", n), ({"id": f"i{n}"},))
    return FeedUpdate(state, Version("ep", n - 1), {"order": [f"i{n}"], "items": {}, "patch": {}})


def _take_now(outbox: Outbox) -> list[Work]:
    """take() when work is already pending (must not block)."""
    return asyncio.run(asyncio.wait_for(outbox.take(), timeout=1.0))


def test_offers_are_taken_in_order() -> None:
    outbox = Outbox(max_diffs=8)
    updates = [_update(n) for n in range(1, 6)]
    for update in updates:
        outbox.offer(update)
    assert outbox.pending == 5
    work = _take_now(outbox)
    assert work == updates
    assert all(a is b for a, b in zip(work, updates, strict=True))
    assert outbox.pending == 0


def test_offers_of_several_feeds_keep_per_feed_order() -> None:
    outbox = Outbox(max_diffs=8)
    offered = [_update(1, "home"), _update(1, "cart"), _update(2, "home"), _update(2, "cart")]
    for update in offered:
        outbox.offer(update)
    work = _take_now(outbox)
    assert sorted(map(id, work)) == sorted(map(id, offered))
    for feed in ("home", "cart"):
        taken = [w for w in work if isinstance(w, FeedUpdate) and w.feed == feed]
        assert [u.state.version.n for u in taken] == [1, 2]


def test_max_diffs_pending_is_not_conflated() -> None:
    calls: list[None] = []
    outbox = Outbox(max_diffs=3, on_conflate=lambda: calls.append(None))
    for n in range(1, 4):
        outbox.offer(_update(n))
    assert outbox.pending == 3
    assert calls == []
    assert len(_take_now(outbox)) == 3


def test_more_than_max_diffs_collapse_into_one_snapshot() -> None:
    calls: list[None] = []
    outbox = Outbox(max_diffs=3, on_conflate=lambda: calls.append(None))
    for n in range(1, 11):
        outbox.offer(_update(n))
    outbox.offer(_update(1, "other"))
    assert len(calls) == 1
    assert outbox.pending == 2
    work = _take_now(outbox)
    assert work[0] == SnapshotWanted("home")
    assert [w for w in work if isinstance(w, SnapshotWanted)] == [SnapshotWanted("home")]
    assert len(work) == 2
    # After taking, the feed starts afresh with diffs.
    outbox.offer(_update(11))
    assert _take_now(outbox) == [_update(11)]
    assert len(calls) == 1


def test_conflation_without_callback() -> None:
    outbox = Outbox(max_diffs=1)
    outbox.offer(_update(1))
    outbox.offer(_update(2))
    assert _take_now(outbox) == [SnapshotWanted("home")]


def test_want_snapshot_replaces_pending_diffs() -> None:
    outbox = Outbox(max_diffs=8)
    outbox.offer(_update(1))
    outbox.offer(_update(2))
    outbox.want_snapshot("home")
    assert outbox.pending == 1
    outbox.offer(_update(3))  # swallowed by the snapshot marker
    assert _take_now(outbox) == [SnapshotWanted("home")]


def test_want_snapshot_on_an_empty_outbox() -> None:
    outbox = Outbox()
    outbox.want_snapshot("home")
    assert _take_now(outbox) == [SnapshotWanted("home")]


def test_take_waits_for_an_offer() -> None:
    async def scenario() -> list[Work]:
        outbox = Outbox()
        task = asyncio.create_task(outbox.take())
        await asyncio.sleep(0)
        assert not task.done()
        outbox.offer(_update(1))
        return await asyncio.wait_for(task, timeout=1.0)

    assert asyncio.run(scenario()) == [_update(1)]


def test_take_after_a_previous_take_waits_again() -> None:
    async def scenario() -> list[list[Work]]:
        outbox = Outbox()
        outbox.offer(_update(1))
        first = await outbox.take()
        task = asyncio.create_task(outbox.take())
        await asyncio.sleep(0.01)
        assert not task.done()  # the earlier set() must not leak into this wait
        outbox.want_snapshot("home")
        return [first, await asyncio.wait_for(task, timeout=1.0)]

    assert asyncio.run(scenario()) == [[_update(1)], [SnapshotWanted("home")]]


def test_close_wakes_a_waiting_take() -> None:
    async def scenario() -> list[Work]:
        outbox = Outbox()
        task = asyncio.create_task(outbox.take())
        await asyncio.sleep(0)
        assert not task.done()
        outbox.close()
        return await asyncio.wait_for(task, timeout=1.0)

    assert asyncio.run(scenario()) == []


def test_close_drops_pending_work_and_refuses_more() -> None:
    outbox = Outbox()
    outbox.offer(_update(1))
    outbox.close()
    assert outbox.closed
    assert outbox.pending == 0
    outbox.offer(_update(2))
    outbox.want_snapshot("home")
    assert outbox.pending == 0
    assert _take_now(outbox) == []
