"""A/B experiments on a real Redis (docs/EXPERIMENTS.md): a variant's parameters reach its users'
lists, every pushed list carries its ``rec``, and impressions and clicks quoting it become
per-variant rates at ``GET /v1/experiments/{name}``, counted once per list and only for the
user's own variant.

The processor-level tests drive :class:`Processor` on a real Redis directly; the server-level
ones run the real server (its experiments file, the admin API, a WebSocket, the event API)."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessions.feeds import FeedStore, FeedUpdate
from streams.events import Event
from streams.experiment_stats import ExperimentStats
from streams.experiments import Experiment, ExperimentSet, parse_experiments
from streams.experiments_store import EXPERIMENTS_KEY
from streams.processor import Processor
from tests.integration.conftest import redis_database, start_server, stop_server, sync_redis
from tests.integration.harness import (
    Server,
    api,
    metric,
    new_id,
    processed_events,
    settle,
    view_settled,
    ws_client,
)
from tests.integration.rig import plain_items, processor_rig

#: Variant ``lean`` scores nothing but the item being looked at: its lists are that one item,
#: while the engine's (control) are full lists without it (repeat weight 0 in these tests).
LEAN = {
    "neighbour_w": 0,
    "category_w": 0,
    "global_w": 0,
    "session_w": 0,
    "model_w": 0,
    "repeat_w": 1,
}
DOC = textwrap.dedent(
    """
    experiments:
      - name: ranker
        traffic: 0.8
        variants:
          - name: control
          - name: lean
            params: {params}
    """
).format(params="{" + ", ".join(f"{k}: {v}" for k, v in LEAN.items()) + "}")


def _experiment(doc: str = DOC) -> Experiment:
    return parse_experiments(doc).experiments[0]


def user_in(experiment: Experiment, variant: str | None, prefix: str = "x") -> str:
    """A fresh user id that ``experiment`` puts in ``variant`` (None: outside its traffic)."""
    while True:
        user = new_id(prefix)
        got = experiment.variant_for(user)
        if (got.name if got else None) == variant:
            return user


# -- the processor on a real Redis ---------------------------------------------------------------


@pytest.fixture
def direct_url() -> Iterator[str]:
    with redis_database(11) as url:  # test_processor's database: both flush it first
        yield url


#: The user whose published updates the rig's broker delivers (it only delivers watched users').
_WATCHED = "watched-lean-1"


def _view(user: str, item: str, ts: int) -> Event:
    return Event(new_id("e"), user, "view", item, ts)


async def _rig(url: str) -> tuple[Processor, FeedStore, ExperimentStats, list[FeedUpdate]]:
    rig = await processor_rig(url, plain_items("abcdefgh"), watched=[_WATCHED], stats=True)
    rig.processor.experiments = parse_experiments(DOC)
    assert rig.processor.stats is not None
    return rig.processor, rig.feeds, rig.processor.stats, rig.published


def test_each_variant_computes_with_its_parameters_and_tags_its_lists(direct_url: str) -> None:
    async def scenario() -> None:
        processor, feeds, _, published = await _rig(direct_url)
        experiment = processor.experiments.experiments[0]
        now = int(time.time() * 1000)
        await processor.handle_batch([_view("o1", "a", now), _view("o1", "b", now + 1)])
        control, outside = user_in(experiment, "control"), user_in(experiment, None)
        lean = _WATCHED
        assert (variant := experiment.variant_for(lean)) is not None and variant.name == "lean"
        await processor.handle_batch([_view(u, "a", now + 10) for u in (control, lean, outside)])
        rev = experiment.revision
        c, le, o = [await feeds.read(u, "home") for u in (control, lean, outside)]
        assert c is not None and le is not None and o is not None
        assert [p["id"] for p in le.items] == ["a"]  # lean: only the item being looked at
        assert "a" not in [p["id"] for p in c.items] and "b" in [p["id"] for p in c.items]
        assert c.tag == f"ranker:{rev}:control" and le.tag == f"ranker:{rev}:lean"
        assert o.tag == "" and o.rec_id == ""  # outside the traffic: the engine, untagged
        assert [p["id"] for p in o.items] == [p["id"] for p in c.items]
        assert le.rec_id == f"{le.version.epoch}.{le.version.n}~ranker:{rev}:lean"
        # What is published carries the tag too (the nodes push it as `rec`).
        assert {u.state.tag for u in published if u.user == lean} == {le.tag}

        # The next version of a list keeps its variant's tag, and a resume replays it.
        await processor.handle_batch([_view(control, "c", now + 20)])
        resume = await feeds.read_since(control, "home", c.version)
        assert resume.updates and [u.tag for u in resume.updates] == [c.tag]
        # An edit of the list (catalog propagation, tag None) keeps the stored tag.
        after = await feeds.read(control, "home")
        assert after is not None
        edited = await feeds.write(control, "home", after, list(after.items[:1]))
        assert edited is not None and edited.state.tag == c.tag
        # A user leaving the experiment gets untagged lists again.
        processor.experiments = ExperimentSet()
        await processor.handle_batch([_view(lean, "b", now + 30)])
        left = await feeds.read(lean, "home")
        assert left is not None and left.tag == "" and len(left.items) > 1

    asyncio.run(scenario())


def test_impressions_and_clicks_count_once_per_list_and_only_for_the_users_variant(
    direct_url: str,
) -> None:
    async def scenario() -> None:
        processor, feeds, stats, _ = await _rig(direct_url)
        experiments = processor.experiments
        experiment = experiments.experiments[0]
        now = int(time.time() * 1000)
        control, lean = user_in(experiment, "control"), user_in(experiment, "lean")
        await processor.handle_batch([_view(u, "a", now) for u in (control, lean)])
        c, le = await feeds.read(control, "home"), await feeds.read(lean, "home")
        assert c is not None and le is not None

        def shown(user: str, rec: str, etype: str = "impression", item: str | None = None) -> Event:
            return Event(new_id("e"), user, etype, item, now + 5, {"rec": rec})

        impression = shown(control, c.rec_id)
        await processor.handle_batch([impression, shown(lean, le.rec_id)])
        await processor.handle_batch([impression])  # a retried batch: dedup and once-per-list
        await processor.handle_batch([shown(control, c.rec_id)])  # a re-render
        await processor.handle_batch([shown(control, c.rec_id, "click", "b")])
        await processor.handle_batch([shown(control, c.rec_id, "click", "b")])  # second click
        # A click whose impression never arrived counts that impression too.
        await processor.handle_batch([_view(lean, "b", now + 6)])
        le2 = await feeds.read(lean, "home")
        assert le2 is not None and le2.rec_id != le.rec_id
        await processor.handle_batch([shown(lean, le2.rec_id, "click", "b")])
        # Forged: the control user quotes the lean list; the lean user quotes an old revision.
        await processor.handle_batch([shown(control, le.rec_id, "click", "a")])
        stale = le.rec_id.replace(experiment.revision, "00000000")
        await processor.handle_batch([shown(lean, stale, "click", "a")])

        report = await stats.read(experiment, "ranker")
        assert report is not None and report["revision"] == experiment.revision
        by_name = {v["name"]: v for v in report["variants"]}
        assert "vs_control" not in by_name["control"]
        assert (by_name["control"]["impressions"], by_name["control"]["clicks"]) == (1, 1)
        assert (by_name["lean"]["impressions"], by_name["lean"]["clicks"]) == (2, 1)
        assert by_name["control"]["users"] == 1 and by_name["lean"]["users"] == 1
        assert by_name["lean"]["ctr"] == pytest.approx(0.5)
        low, high = by_name["lean"]["ci95"]
        assert 0 < low < 0.5 < high < 1
        assert by_name["lean"]["vs_control"]["difference"] == pytest.approx(-0.5)

    asyncio.run(scenario())


# -- the real server ---------------------------------------------------------------------------


def _clean(url: str) -> None:
    client = sync_redis(url)
    client.delete(EXPERIMENTS_KEY, "pr:rules")
    for key in client.keys("pr:{x:*"):  # experiment counters: one slot per key
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    """Database 6 of ``PUSHREC_TEST_REDIS_URL`` (test_rules' too; cleaned before and after, so
    neither module sees the other's documents), or a private Redis."""
    with redis_database(6) as url:
        _clean(url)
        yield url
        _clean(url)


@pytest.fixture(scope="module")
def node(node_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path: Path = tmp_path_factory.mktemp("experiments") / "experiments.yaml"
    path.write_text(DOC)
    proc, srv = start_server(
        {"PUSHREC_REDIS_URL": node_url, "PUSHREC_EXPERIMENTS_FILE": str(path)}, isolated=True
    )
    try:
        srv.load_catalog()
        asyncio.run(view_settled(srv, new_id("crowd"), "phones-1", "phones-2", "books-1"))
        yield srv
        # Announced, so every node following this Redis drops the module's experiments: on a
        # cluster (one database) that includes the session's shared server.
        asyncio.run(_put(srv, "experiments: []\n"))
    finally:
        stop_server(proc)


async def _put(srv: Server, body: str, *, status: int = 200, **headers: str) -> dict[str, Any]:
    async with api(srv) as client:
        r = await client.put(
            "/v1/experiments",
            content=body,
            headers={**srv.admin, "Content-Type": "application/yaml", **headers},
        )
        assert r.status_code == status, r.text
        answer: dict[str, Any] = r.json()
        return answer


async def _results(srv: Server, name: str, **params: str) -> httpx.Response:
    async with api(srv) as client:
        return await client.get(f"/v1/experiments/{name}", headers=srv.admin, params=params)


async def _events(srv: Server, user: str, events: list[dict[str, Any]]) -> httpx.Response:
    async with api(srv) as client:
        before = await processed_events(srv, client)
        r = await client.post("/v1/events", json=events, headers=srv.bearer(user))
        if r.status_code == 202:
            await settle(srv, before, len(events), client)
        return r


def test_the_experiments_file_is_loaded_and_the_api_validates_and_replaces_it(
    node: Server,
) -> None:
    async def scenario() -> None:
        async with api(node) as client:
            r = await client.get("/v1/experiments", headers=node.admin)
            assert r.status_code == 200
            listed = r.json()
            assert listed["version"] >= 1
            assert [(e["name"], e["revision"]) for e in listed["experiments"]] == [
                ("ranker", _experiment().revision)
            ]
            assert (await client.get("/v1/experiments")).status_code == 401
            assert (await client.get("/v1/experiments/ranker")).status_code == 401
        bad = await _put(node, "experiments:\n  - name: x\n    variants: [{name: a}]\n", status=400)
        assert bad["error"] == "bad_experiments" and bad["line"] == 3
        assert "2 to 10 variants" in bad["message"]
        same = await _put(node, DOC)  # the same document: no new version
        assert same["version"] == listed["version"]
        assert await metric(node, "pushrec_experiments_reloads_total", outcome="invalid") >= 1

    asyncio.run(scenario())


def test_a_variant_reaches_its_users_socket_with_rec_and_its_clicks_become_rates(
    node: Server,
) -> None:
    experiment = _experiment()
    control, lean = user_in(experiment, "control", "c"), user_in(experiment, "lean", "l")

    async def scenario() -> None:
        stored_c = await view_settled(node, control, "phones-1")
        stored_l = await view_settled(node, lean, "phones-1")
        assert [p["id"] for p in stored_l["items"]] == ["phones-1"]
        assert len(stored_c["items"]) > 1 and "phones-1" not in [p["id"] for p in stored_c["items"]]
        assert stored_l["rec"].endswith(f"~ranker:{experiment.revision}:lean")
        async with ws_client(node, lean) as feed:
            assert feed.rec == stored_l["rec"]  # the snapshot carries it
            r = await _events(
                node, lean, [{"event_id": new_id("e"), "type": "view", "item_id": "phones-2"}]
            )
            assert r.status_code == 202
            await feed.wait(lambda s: s.ids == ["phones-2"])
            rec = feed.rec  # and so does the diff, with the new list's id
            assert rec is not None and rec != stored_l["rec"]
        assert rec.endswith(f"~ranker:{experiment.revision}:lean")

        impression = {"event_id": new_id("e"), "type": "impression", "props": {"rec": rec}}
        click = {
            "event_id": new_id("e"),
            "type": "click",
            "item_id": "phones-2",
            "props": {"rec": rec},
        }
        again = {**impression, "event_id": new_id("e")}  # a re-render: counted once
        assert (await _events(node, lean, [impression, click, again])).status_code == 202
        # The control user quoting the lean list counts nothing (stale).
        forged = {**click, "event_id": new_id("e")}
        assert (await _events(node, control, [forged])).status_code == 202
        bad = await _events(
            node,
            lean,
            [
                {
                    "event_id": new_id("e"),
                    "type": "click",
                    "item_id": "phones-2",
                    "props": {"rec": "nonsense"},
                }
            ],
        )
        assert bad.status_code == 400 and "bad_rec" in bad.text

        r = await _results(node, "ranker")
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["running"] and report["revision"] == experiment.revision
        by_name = {v["name"]: v for v in report["variants"]}
        lean_row = by_name["lean"]
        assert (lean_row["impressions"], lean_row["clicks"], lean_row["users"]) == (1, 1, 1)
        assert lean_row["ctr"] == 1.0 and lean_row["ci95"][1] == 1.0
        assert by_name["control"]["clicks"] == 0 and by_name["control"]["share"] == 0.5
        counted = await metric(node, "pushrec_experiment_events_total", outcome="counted")
        assert counted >= 2
        assert await metric(node, "pushrec_experiment_events_total", outcome="repeat") >= 1
        assert await metric(node, "pushrec_experiment_events_total", outcome="stale") >= 1

        # A changed definition is a new revision: it counts afresh, the old one stays readable.
        changed = DOC.replace("traffic: 0.8", "traffic: 0.9")
        new_rev = _experiment(changed).revision
        await _put(node, changed)
        r = await _results(node, "ranker")
        fresh = r.json()
        assert fresh["revision"] == new_rev and experiment.revision in fresh["other_revisions"]
        assert all(v["impressions"] == 0 for v in fresh["variants"])
        old = (await _results(node, "ranker", revision=experiment.revision)).json()
        assert {v["name"]: v["clicks"] for v in old["variants"]}["lean"] == 1
        assert not old["running"]
        # Stopped: the last revision that counted is still reported.
        await _put(node, "experiments: []\n")
        stopped = (await _results(node, "ranker")).json()
        assert not stopped["running"] and stopped["revision"] == experiment.revision
        assert (await _results(node, "nothing")).status_code == 404
        assert (await _results(node, "ranker", revision="xyz")).status_code == 400
        assert (await _results(node, "ranker", revision="0123abcd")).status_code == 404
        # Without experiments the lists go untagged again.
        after = await view_settled(node, lean, "books-1")
        assert "rec" not in after and len(after["items"]) > 1

    asyncio.run(scenario())
