"""Integration tests of streams/merge.py (and its scripts streams/lua/merge_*.lua) on a real Redis.

Nothing is mocked: events go through :class:`ProfileStore` to an anonymous visitor and to a user,
the visitor is merged into the user, and the keys are read back. The reference for "merged right"
is a third profile that received both visitors' events in one timeline: per-user keys must match
it (affinity once decayed to a common time, since origins may differ).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from sessions.feeds import FeedStore
from sessions.keys import user_tag
from streams.events import Event
from streams.merge import MergeResult, merge_profiles
from streams.profile import ProfileStore, ProfileTuning, ProfileView, ScoringTuning
from tests.integration.conftest import redis_database, run

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TTL_S = 3600
#: A short half-life, so a different origin of the two profiles shows in the scores.
DECAYING = ProfileTuning(ttl_s=TTL_S, affinity_halflife_ms=20_000)
#: Half-lives far beyond any test's span: no decay, scores are plain sums.
EXACT = ProfileTuning(ttl_s=TTL_S, affinity_halflife_ms=10**22, trending_halflife_ms=10**22)
ANON = "anon:Vq3xT0cLr8Zk2mNwPa7sYe"
USER = "u-42"
REF = "ref"  # receives both visitors' events, in one timeline
PROFILE = ("dedup", "recent", "aff", "cart", "bought", "p")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_database(12) as url:
        yield url


class Sim:
    """Sends events through a :class:`ProfileStore`, each also to ``REF`` (with its own id)."""

    def __init__(self, r: Redis, tuning: ProfileTuning) -> None:
        self.r = r
        self.tuning = tuning
        # Without session kNN: the user and its reference would count each other as neighbours.
        self.store = ProfileStore(r, tuning, ScoringTuning(session_w=0.0, repeat_w=0.0))
        self.clock = NOW
        self._ids = itertools.count()
        self.sent: dict[str, list[str]] = {}

    async def send(
        self,
        user: str,
        etype: str,
        item: str | None = None,
        cats: Sequence[str] = (),
        *,
        ts: int | None = None,
        ref: bool = True,
    ) -> None:
        if ts is None:
            self.clock += 1000
            ts = self.clock
        n = next(self._ids)
        eid = f"e{n}"
        status, _ = await self.store.apply(Event(eid, user, etype, item, ts), list(cats))
        assert status in ("ok", "noop")
        self.sent.setdefault(user, []).append(eid)
        if ref:
            status, _ = await self.store.apply(Event(f"r{n}", REF, etype, item, ts), list(cats))
            assert status in ("ok", "noop")

    async def refresh(self, user: str) -> ProfileView:
        status, view = await self.store.apply(Event("", user, "refresh", None, self.clock), [])
        assert status == "ok"
        assert view is not None
        return view

    async def merge(self, anon: str = ANON, user: str = USER, **kw: Any) -> MergeResult:
        return await merge_profiles(self.r, anon, user, tuning=self.tuning, **kw)


def key(user: str, name: str) -> str:
    return user_tag(user) + name


async def zset(r: Redis, name: str) -> dict[str, float]:
    flat: list[Any] = await r.zrange(name, 0, -1, withscores=True)
    return {m.decode(): float(s) for m, s in flat}


async def members(r: Redis, name: str) -> set[str]:
    raw: set[Any] = await r.smembers(name)
    return {m.decode() for m in raw}


async def scalars(r: Redis, user: str) -> dict[str, str]:
    raw: dict[Any, Any] = await r.hgetall(key(user, "p"))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def decayed_aff(r: Redis, user: str, tuning: ProfileTuning, at: int) -> dict[str, float]:
    """The user's affinity as weights at time ``at`` (independent of the stored origin)."""
    a0 = int((await scalars(r, user))["a0"])
    factor = 2 ** (-(at - a0) / tuning.affinity_halflife_ms)
    return {c: s * factor for c, s in (await zset(r, key(user, "aff"))).items()}


async def keys_of(r: Redis, user: str) -> set[str]:
    return {k.decode() async for k in r.scan_iter(match=user_tag(user) + "*")}


async def dumps(r: Redis, user: str) -> dict[str, bytes | None]:
    """Every key of ``user``, serialised: equal dumps mean nothing changed (TTLs aside)."""
    return {k: await r.dump(k) for k in sorted(await keys_of(r, user))}


async def history(sim: Sim, *, same_origin: bool) -> None:
    """The user's earlier sessions, then the visitor's session (the latest), both also to REF.

    The user: views a (hats), carts x and y, bought w. The visitor: buys x (leaves the cart),
    carts z and w again (bought before, wanted again), views hats and shoes.
    """
    first = sim.clock + 1000
    await sim.send(USER, "view", "a", ["hats"], ts=first)
    await sim.send(USER, "add_to_cart", "x", ["hats"])
    await sim.send(USER, "add_to_cart", "y", ["shoes"])
    await sim.send(USER, "purchase", "w", ["hats"])
    await sim.send(USER, "search", None, ["shoes"])
    if same_origin:
        await sim.send(ANON, "view", "b", ["shoes"], ts=first)
    else:
        sim.clock += 61_234  # about three half-lives of DECAYING later
    await sim.send(ANON, "view", "c", ["hats"])
    await sim.send(ANON, "purchase", "x", ["hats"])
    await sim.send(ANON, "add_to_cart", "z", ["shoes"])
    await sim.send(ANON, "view", "a", ["hats"])  # seen by both: the later touch wins
    await sim.send(ANON, "add_to_cart", "w", ["hats"])
    await sim.send(ANON, "impression", "q")  # dedup only


async def assert_like_reference(sim: Sim) -> None:
    r = sim.r
    for name in ("recent", "bought"):
        assert await zset(r, key(USER, name)) == await zset(r, key(REF, name)), name
    cart = await members(r, key(USER, "cart"))
    assert cart == await members(r, key(REF, "cart")) == {"y", "z", "w"}
    at = sim.clock + 5000
    merged = await decayed_aff(r, USER, sim.tuning, at)
    assert merged == pytest.approx(await decayed_aff(r, REF, sim.tuning, at), rel=1e-12)
    assert set(merged) == {"hats", "shoes"}


# Merging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("same_origin", [True, False])
def test_merged_profile_is_the_one_timeline_of_both(redis_url: str, same_origin: bool) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, DECAYING)
        await history(sim, same_origin=same_origin)
        user_a0 = int((await scalars(r, USER))["a0"])
        anon_a0 = int((await scalars(r, ANON))["a0"])
        assert (user_a0 == anon_a0) is same_origin
        # The visitor's feed and its history (a second version writes a diff) go too.
        feeds = FeedStore(r, ttl_s=TTL_S, history_len=10)
        first = await feeds.write(ANON, "home", None, [{"id": "a"}])
        assert first is not None
        await feeds.write(ANON, "home", first.state, [{"id": "b"}])
        assert len(await keys_of(r, ANON)) == 8

        result = await sim.merge()

        extra = 1 if same_origin else 0  # the view of b
        assert result == MergeResult(
            recent=5 + extra, aff=2, cart=2, bought=1, dedup=6 + extra, deleted=8
        )
        assert result.merged
        await assert_like_reference(sim)
        if same_origin:  # the same scale: the stored scores themselves are the reference's
            assert await zset(r, key(USER, "aff")) == pytest.approx(
                await zset(r, key(REF, "aff")), rel=1e-12
            )
        p = await scalars(r, USER)
        assert int(p["a0"]) == max(user_a0, anon_a0)
        # No key of the visitor is left.
        assert await keys_of(r, ANON) == set()

    run(redis_url, body)


def test_merged_user_scores_and_decays_like_the_reference(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, DECAYING)
        for n in range(4):  # others teach neighbours and trending
            await sim.send(f"o{n}", "view", "c", ["hats"], ref=False)
            await sim.send(f"o{n}", "view", f"n{n}", ["hats"], ref=False)
        await history(sim, same_origin=False)
        await sim.merge()
        # The event script continues on the merged origin like on the reference's.
        await sim.send(USER, "view", "d", ["shoes"], ref=False)
        await sim.send(REF, "view", "d", ["shoes"], ts=sim.clock, ref=False)
        await assert_like_reference(sim)
        merged, ref = (await sim.refresh(USER)).candidates, (await sim.refresh(REF)).candidates
        assert [i for i, _ in merged] == [i for i, _ in ref]
        assert [s for _, s in merged] == pytest.approx([s for _, s in ref], rel=1e-9)
        assert merged

    run(redis_url, body)


def test_the_visitors_events_are_duplicates_for_the_user(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, EXACT)
        await history(sim, same_origin=True)
        before = set((await zset(r, key(USER, "dedup"))).keys())
        await sim.merge()
        dedup = set((await zset(r, key(USER, "dedup"))).keys())
        assert dedup == before | set(sim.sent[ANON])
        state = await dumps(r, USER)
        for eid in sim.sent[ANON]:  # e.g. the client re-sends them under its new identity
            replay = Event(eid, USER, "purchase", "r", sim.clock)
            assert await sim.store.apply(replay, ["hats"]) == ("duplicate", None)
        assert await dumps(r, USER) == state

    run(redis_url, body)


def test_merge_is_idempotent(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, EXACT)
        await history(sim, same_origin=False)
        first = await sim.merge()
        state = await dumps(r, USER)
        again = await sim.merge()
        assert again == MergeResult(0, 0, 0, 0, 0, 0)
        assert not again.merged
        assert first.merged
        assert await dumps(r, USER) == state
        await assert_like_reference(sim)

    run(redis_url, body)


def test_a_visitor_without_profile_changes_nothing(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, EXACT)
        await sim.send(USER, "add_to_cart", "x", ["hats"])
        state = await dumps(r, USER)
        assert await sim.merge() == MergeResult(0, 0, 0, 0, 0, 0)
        assert await dumps(r, USER) == state
        # Neither has a profile: nothing is created.
        assert await sim.merge(user="nobody") == MergeResult(0, 0, 0, 0, 0, 0)
        assert await keys_of(r, "nobody") == set()

    run(redis_url, body)


def test_a_user_without_profile_takes_over_the_visitors(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, DECAYING)
        await sim.send(ANON, "view", "a", ["hats"], ref=False)
        await sim.send(ANON, "add_to_cart", "b", ["shoes"], ref=False)
        await sim.send(ANON, "purchase", "c", ["hats"], ref=False)
        expected = {
            name: await zset(r, key(ANON, name)) for name in ("dedup", "recent", "aff", "bought")
        }
        cart, p = await members(r, key(ANON, "cart")), await scalars(r, ANON)

        result = await sim.merge()

        assert result == MergeResult(recent=3, aff=2, cart=1, bought=1, dedup=3, deleted=6)
        for name, values in expected.items():
            assert await zset(r, key(USER, name)) == values, name
        assert await members(r, key(USER, "cart")) == cart == {"b"}
        # Beside the visitor's scalars, mg: the merge applied (streams/merge.py, step 2).
        assert {k: v for k, v in (await scalars(r, USER)).items() if k != "mg"} == p
        assert await keys_of(r, ANON) == set()

    run(redis_url, body)


def test_every_user_key_gets_the_profile_ttl(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, EXACT)
        await history(sim, same_origin=True)
        for name in PROFILE:
            await r.expire(key(USER, name), 5)
        await sim.merge()
        assert {k.removeprefix(user_tag(USER)) for k in await keys_of(r, USER)} == set(PROFILE)
        for name in PROFILE:
            assert TTL_S - 5 < await r.ttl(key(USER, name)) <= TTL_S, name

    run(redis_url, body)


def test_recent_bought_and_dedup_keep_their_caps(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        tuning = replace(EXACT, recent_max=3, dedup_max=4, dedup_window_ms=10**9)
        sim = Sim(r, tuning)
        for item in "abc":
            await sim.send(USER, "view", item)
        for item in "de":
            await sim.send(ANON, "view", item)
        await sim.send(ANON, "view", "a")
        await sim.merge()
        # The newest three touches of both: a (the visitor's), e, d; b and c go.
        assert list(await zset(r, key(USER, "recent"))) == ["d", "e", "a"]
        # Event ids: the newest four of the user's and the visitor's (as one timeline).
        assert set(await zset(r, key(USER, "dedup"))) == set(sim.sent[ANON]) | {sim.sent[USER][-1]}

    run(redis_url, body)


def test_dedup_keeps_its_window(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, replace(EXACT, dedup_window_ms=10_000))
        await sim.send(USER, "view", "a")
        sim.clock += 20_000
        await sim.send(ANON, "view", "b")
        await sim.merge()
        assert set(await zset(r, key(USER, "dedup"))) == set(sim.sent[ANON])

    run(redis_url, body)


# Deleting the visitor's keys --------------------------------------------------------------------


def test_sweep_deletes_any_other_key_of_the_visitor_only(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, EXACT)
        other = ANON + "x"  # a longer id with the same start: a different tag
        for anon in (ANON, other):
            await sim.send(anon, "view", "a", ref=False)
            await r.set(key(anon, "future"), "1")
        assert (await sim.merge()).deleted == 3  # dedup, recent, p: the known keys only
        assert await keys_of(r, ANON) == {key(ANON, "future")}
        assert (await sim.merge(sweep=True)).deleted == 1
        assert await keys_of(r, ANON) == set()
        assert await keys_of(r, other) == {
            key(other, n) for n in ("dedup", "recent", "p", "future")
        }

    run(redis_url, body)


@pytest.mark.parametrize(
    ("anon", "user"),
    [(USER, "u-43"), (ANON, ANON), (ANON, "anon:Other0000000000000000"), ("anon:", USER)],
)
def test_only_an_anonymous_visitor_merges_into_a_user(redis_url: str, anon: str, user: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, EXACT)
        for who in (anon, user):
            await sim.send(who, "view", "a", ref=False)
        state = {who: await dumps(r, who) for who in (anon, user)}
        with pytest.raises(ValueError, match="id"):
            await sim.merge(anon, user)
        assert {who: await dumps(r, who) for who in (anon, user)} == state

    run(redis_url, body)
