"""User ids that hold ``}``, ``:``, ``*``, ``?``, ``[``, ``\\`` or ``%`` on the real server and a
real Redis (issue 12, defect 6): ``DELETE /v1/users/tagx`` once erased the keys of user
``tagx}:evil`` and the export of ``tagx`` listed them, because ``pr:{u:tagx}:*`` matched them.

Each user below does the same things; then every one of them is exported and erased in turn, and
the whole database is compared before and after each erasure: exactly that user's keys go, and
every other key keeps its content but for that user's own entries in the item-side indexes and
timers. Such users also get their feeds pushed, and serve as session-kNN neighbours.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from sessions.keys import encode_user, user_tag
from streams.events import Event
from streams.profile import ProfileStore, ScoringTuning
from tests.integration.conftest import redis_database, run, start_server, stop_server, sync_redis
from tests.integration.harness import Server, api, new_id, processed_events, settle, ws_client
from tests.integration.test_privacy import EXPERIMENTS, RULES

#: Keys whose members name users: a user's erasure removes their entries, nothing else.
INDEXES = re.compile(rb"pr:\{i:[^}]*\}:(is|shown:[^:]*)")


def is_index(key: bytes) -> bool:
    return INDEXES.fullmatch(key) is not None


def is_timers(key: bytes) -> bool:
    """A timers bucket (``pr:{tm:<b>}:timers`` / ``:claimed``)."""
    return key.startswith(b"pr:{tm:")


def timers_of(export: dict[str, Any]) -> list[str]:
    """Every timer an export lists, whichever bucket holds it."""
    return [m for members in export["timers"].values() for m in members]


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    """Database 26 of ``PUSHREC_TEST_REDIS_URL`` (emptied first), or a private Redis: the tests
    compare the whole database, so nothing else may write to it."""
    with redis_database(26) as url:
        yield url


@pytest.fixture(scope="module")
def node(node_url: str) -> Iterator[Server]:
    env = {"PUSHREC_REDIS_URL": node_url, "PUSHREC_WORKER": "1", "PUSHREC_SESSION_WEIGHT": "1"}
    proc, srv = start_server(env)
    try:
        srv.load_catalog()
        for path, body in (("/v1/rules", RULES), ("/v1/experiments", EXPERIMENTS)):
            r = httpx.put(f"{srv.http}{path}", content=body, headers=srv.admin)
            assert r.status_code == 200, r.text
        yield srv
    finally:
        stop_server(proc)


def hostile(base: str) -> list[str]:
    """Ids that a prefix match, a glob or a non-injective encoding would confuse with ``base``
    or with each other (``base%7D:evil`` is what ``base}:evil`` percent-encodes to)."""
    return [
        f"{base}}}:evil",
        f"{base}}}",
        f"{base}}}:evil}}:x",
        f"{base}*",
        f"{base}?",
        f"{base}[a-z]",
        f"{base}:x",
        f"{base}\\",
        f"{base}%7D:evil",
        f"{{u:{base}}}",
    ]


def path(user: str) -> str:
    return f"/v1/users/{quote(user, safe='')}"


def event(user: str, etype: str, item: str | None = None, **props: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": new_id("e"), "user_id": user, "type": etype}
    if item is not None:
        body["item_id"] = item
    if props:
        body["props"] = props
    return body


async def post_settled(
    srv: Server, client: httpx.AsyncClient, events: list[dict[str, Any]]
) -> None:
    before = await processed_events(srv, client)
    r = await client.post("/v1/events", json=events, headers=srv.admin)
    assert r.status_code == 202 and r.json()["accepted"] == len(events), r.text
    await settle(srv, before, len(events), client)


async def activity(srv: Server, user: str) -> None:
    """Views (profile, neighbours, session index, trigger times, an offer), context feeds, a cart
    (a timer) and an impression of a tagged list (experiment marks): every kind of user key."""
    async with api(srv) as client:
        views = [event(user, "view", i) for i in ("phones-1", "phones-2", "phones-1")]
        await post_settled(srv, client, views)
        for feed in ("home", "similar", "cart", "offers"):
            r = await client.get(f"{path(user)}/feeds/{feed}", headers=srv.admin)
            assert r.status_code == 200, r.text
            if feed == "home":
                rec = r.json()["rec"]
        await post_settled(
            srv,
            client,
            [event(user, "add_to_cart", "books-1"), event(user, "impression", rec=rec)],
        )
        await post_settled(srv, client, [event(user, "view", "books-2")])


def dump(url: str) -> dict[bytes, tuple[str, Any]]:
    """Every key of the database with its type and content (not its TTL)."""
    client = sync_redis(url)
    out: dict[bytes, tuple[str, Any]] = {}
    try:
        for key in client.scan_iter(count=1000):
            found: Any = client.type(key)
            kind = found.decode()
            content: Any
            if kind == "string":
                content = client.get(key)
            elif kind == "hash":
                content = client.hgetall(key)
            elif kind == "zset":
                pairs: Any = client.zrange(key, 0, -1, withscores=True)
                content = dict(pairs)
            elif kind == "set":
                content = client.smembers(key)
            elif kind == "list":
                content = client.lrange(key, 0, -1)
            elif kind == "stream":
                content = client.xrange(key)
            else:  # expired meanwhile
                continue
            out[key] = (kind, content)
    finally:
        client.close()
    return out


def member(key: bytes, user: str) -> bytes:
    """How ``user`` appears in the index ``key``: the session-kNN index lists encoded ids (the
    event script makes key names of them), catalog propagation's the ids themselves."""
    return (encode_user(user) if key.endswith(b":is") else user).encode()


def timer_of(member: bytes, user: str) -> bool:
    fields = member.split(b"\n")
    return len(fields) > 2 and fields[2] == user.encode()


def assert_only_erased(
    before: dict[bytes, tuple[str, Any]],
    after: dict[bytes, tuple[str, Any]],
    user: str,
    own: set[bytes],
) -> None:
    """Between the two dumps exactly ``own`` (the user's keys) went, the user's entries left the
    indexes and timers (an index left empty goes), and nothing else changed."""
    emptied = {
        k
        for k, (kind, content) in before.items()
        if kind == "zset"
        and (
            (is_index(k) and set(content) == {member(k, user)})
            or (is_timers(k) and all(timer_of(m, user) for m in content))
        )
    }
    assert set(before) - set(after) == own | emptied, user
    assert not set(after) - set(before), user
    for key, (kind, content) in after.items():
        was_kind, was = before[key]
        assert kind == was_kind, key
        if is_index(key):
            was = {m: s for m, s in was.items() if m != member(key, user)}
        elif is_timers(key):
            was = {m: s for m, s in was.items() if not timer_of(m, user)}
        assert content == was, key


def test_erase_and_export_of_one_user_touch_no_other_user(node: Server, node_url: str) -> None:
    base = f"tagx{uuid.uuid4().hex[:8]}"
    control = f"plain{uuid.uuid4().hex[:8]}"
    # The ordinary id first: its tag is a prefix of the hostile ones' old key names.
    users = [base, *hostile(base)]

    async def scenario() -> None:
        # Each user's keys, as their own activity created them (nobody else acts meanwhile).
        own: dict[str, set[bytes]] = {}
        for user in [control, *users]:
            before = dump(node_url)
            await activity(node, user)
            own[user] = {k for k in set(dump(node_url)) - set(before) if k.startswith(b"pr:{u:")}
            names = {k.decode() for k in own[user]}
            assert {f"{user_tag(user)}{k}" for k in ("recent", "dedup", "feed:home")} <= names
        async with api(node) as client:
            exports = {}
            for user in [control, *users]:
                r = await client.get(f"{path(user)}/export", headers=node.admin)
                assert r.status_code == 200, r.text
                exports[user] = r.json()
            timers = len(timers_of(exports[control]))
            assert timers > 0
            for user in users:
                data = exports[user]
                assert data["user"] == user
                # Exactly the user's keys: not one more (another user's), not one less.
                listed = {f"{user_tag(user)}{suffix}".encode() for suffix in data["keys"]}
                assert listed == own[user], user
                assert len(data["indexes"]["is"]) == len(exports[control]["indexes"]["is"])
                assert len(timers_of(data)) == timers, user
                assert all(m.split("\n")[2] == user for m in timers_of(data)), user

            for user in users:
                before = dump(node_url)
                r = await client.delete(path(user), headers=node.admin)
                assert r.status_code == 200, r.text
                erased = r.json()["erased"]
                assert (erased["keys"], erased["timers"]) == (len(own[user]), timers), user
                assert_only_erased(before, dump(node_url), user, own[user])

            r = await client.get(f"{path(control)}/export", headers=node.admin)
            kept = r.json()
            assert kept["timers"] == exports[control]["timers"]  # the bystander lost nothing
            assert {k: v["value"] for k, v in kept["keys"].items()} == {
                k: v["value"] for k, v in exports[control]["keys"].items()
            }

    asyncio.run(scenario())


def test_keys_stored_before_ids_were_encoded_are_found_exactly(node: Server, node_url: str) -> None:
    """Data written under the raw id's tag (``pr:{u:old}:evil}:recent`` for ``old}:evil``, as
    before ids were encoded) is exported and erased with the user's, and only theirs: not the
    keys of an id extending it, nor those of the ordinary id it extends."""
    base = f"old{uuid.uuid4().hex[:8]}"
    user = f"{base}}}:evil"
    longer = f"{user}}}:x"
    client = sync_redis(node_url)
    legacy = [f"pr:{{u:{user}}}:recent", f"pr:{{u:{user}}}:feed:home"]
    others = [
        f"pr:{{u:{longer}}}:recent",  # the longer id's old key
        f"pr:{{u:{base}}}:recent",  # the ordinary id's key
        f"{user_tag(longer)}recent",  # the longer id's key today
    ]
    index = f"pr:is:{base}-item".encode()
    try:
        for key in [legacy[0], *others]:
            client.zadd(key, {"phones-1": 1.0})
        client.hset(legacy[1], mapping={"e": "E", "n": "1"})
        client.zadd(index, {user: 1.0, longer: 2.0, base: 3.0, encode_user(longer): 4.0})

        async def scenario() -> None:
            async with api(node) as http:
                r = await http.get(f"{path(user)}/export", headers=node.admin)
                assert r.status_code == 200, r.text
                assert sorted(r.json()["legacy_keys"]) == ["feed:home", "recent"]
                assert r.json()["indexes"]["is"] == [index.decode()]
                before = dump(node_url)
                r = await http.delete(path(user), headers=node.admin)
                assert r.status_code == 200, r.text
                assert r.json()["erased"]["keys"] == 2
                after = dump(node_url)
                assert set(before) - set(after) == {k.encode() for k in legacy}
                assert set(after[index][1]) == {longer.encode(), base.encode()} | {
                    encode_user(longer).encode()
                }
                for key in set(after) - {index}:
                    assert after[key] == before[key], key

        asyncio.run(scenario())
    finally:
        for name in [*legacy, *others]:  # one key per command: one slot each
            client.delete(name)
        client.delete(index)
        client.close()


def test_users_with_such_ids_get_their_feeds_pushed(node: Server) -> None:
    """Events of such a user reach their socket: a second look at an item puts an offer in their
    own ``offers`` feed (RULES), pushed over the WebSocket and stored under their keys."""
    base = f"push{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with api(node) as client:
            for user in hostile(base):
                async with ws_client(node, user, feed="offers") as feed:
                    assert feed.ids == []
                    views = [event(user, "view", "shoes-3") for _ in range(2)]
                    await post_settled(node, client, views)
                    await feed.wait(lambda s: s.ids == ["shoes-3"])
                    r = await client.get(f"{path(user)}/feeds/offers", headers=node.admin)
                    assert r.status_code == 200, r.text
                    assert r.json()["version"] == feed.version
                    assert [p["id"] for p in r.json()["items"]] == feed.ids

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def knn_url() -> Iterator[str]:
    with redis_database(27) as url:
        yield url


KNN_ONLY = ScoringTuning(neighbour_w=0.0, category_w=0.0, global_w=0.0, session_w=1.0, repeat_w=0.0)


def test_users_with_such_ids_are_session_neighbours(knn_url: str) -> None:
    """The session-kNN index names its users so that the event script finds their recent items:
    neighbours with any id vote for what followed the item shared with the user."""

    async def body(r: Any) -> None:
        store = ProfileStore(r, scoring=KNN_ONLY)
        ts = 1_767_225_600_000
        for n, neighbour in enumerate(hostile("nb")):
            for item in ("a", f"next-{n}"):
                ts += 1000
                await store.apply(Event(new_id("e"), neighbour, "view", item, ts), [])
        status, view = await store.apply(Event(new_id("e"), "me}", "view", "a", ts + 1000), [])
        assert status == "ok" and view is not None
        voted = {item for item, _ in view.candidates}
        assert voted == {f"next-{n}" for n in range(len(hostile("nb")))}

    run(knn_url, body)
