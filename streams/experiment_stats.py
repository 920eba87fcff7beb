"""Experiment statistics: impressions and clicks of pushed lists, per variant, with intervals.

Every list computed for a user in an experiment carries a recommendation id (``rec``, see
:func:`sessions.feeds.rec_id`) naming the experiment, its revision and the user's variant.
``impression`` and ``click`` events quoting it in ``props.rec`` are counted here
(``lua/exp_count.lua``), after the pipeline applied them:

- **Once per list.** An impression counts once per list (re-renders, two tabs, a retried batch
  count once), a click once per list; a click whose list's impression never arrived counts that
  impression too. So per variant, clicks ≤ impressions and the click-through rate is a
  proportion of lists, with a binomial (Wilson) interval.
- **Only what the variant made.** A label counts only when its experiment still runs at that
  revision and the user's variant (recomputed, :meth:`Experiment.variant_for`) is the one named:
  a forged or outdated id counts nothing (outcome ``stale``).
- **Users exposed** are counted once per user and revision (``pr:{u:<id>}:xe``, the user's
  exposures, with the profile TTL: erasing the user erases them; the aggregate stays).

Keys (:mod:`sessions.keys`): per experiment, :data:`~sessions.keys.STATS_BUCKETS` buckets, a
user's counts always in the same one (crc32 of the id): ``pr:{x:<experiment>:<b>}:s:<revision>``
(hash ``<variant>:i|c|u``) and ``pr:{x:<experiment>:<b>}:revs`` (the revisions that counted
in that bucket, by first count); readers sum the buckets (one pipelined round trip). So no key is
written on every event of an experiment, and on Redis Cluster the buckets spread over the
shards. ``pr:{u:<id>}:xm`` (lists counted, 1 day) and ``pr:{u:<id>}:xe`` are the user's.

Two steps per batch, each call on one slot: the user's script (``lua/exp_count.lua``) records
the marks and says what to count, then the counters are incremented (plain ``HINCRBY``,
pipelined). A worker dying between the two loses those counts (the marks say "counted", so a
redelivered batch does not count them): counts can fall short, never double.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from sessions.feeds import parse_rec_id
from sessions.keys import STATS_BUCKETS, revisions_key, stats_bucket, stats_key, user_tag
from sessions.scripts import Call, PipelinedScript
from sessions.text import text
from streams.events import Event
from streams.experiments import Experiment, ExperimentSet, Label, labels_of

_COUNT_LUA = resources.files("streams").joinpath("lua/exp_count.lua").read_text()
#: Event types that count, and their code in the script.
KINDS = {"impression": "i", "click": "c"}
#: Two-sided 95 %.
Z95 = 1.959963984540054
STATS_TTL_S = 180 * 86_400
MARKS_TTL_S = 86_400
MAX_MARKS = 5_000

#: Called once per counted-kind event with (event type, outcome): ``counted``, ``repeat`` (this
#: list was counted before), ``stale`` (no label the user's current variants back).
Observer = Callable[[str, str], None]


def _ignore(_type: str, _outcome: str) -> None:
    return None


class ExperimentStats:
    """Counts exposures and reads them back as per-variant rates."""

    def __init__(
        self,
        redis: Redis,
        *,
        exposure_ttl_s: int,
        observe: Observer = _ignore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._exposure_ttl_s = exposure_ttl_s
        self._script = PipelinedScript(redis, _COUNT_LUA, name="exp_count.lua")
        self.observe = observe
        self._clock = clock

    async def record(self, events: Sequence[Event], experiments: ExperimentSet) -> int:
        """Count the impressions and clicks among ``events`` that quote a list's ``rec``.

        Idempotent per list (see the module docstring), so a retried batch counts nothing twice.
        One pipelined round trip when any event counts, none otherwise. Returns how many counted.
        """
        calls: list[Call] = []
        asked: list[tuple[Event, list[Label]]] = []
        now = int(self._clock() * 1000)
        for event in events:
            kind = KINDS.get(event.type)
            rec = event.props.get("rec")
            if kind is None or not isinstance(rec, str):
                continue
            labels = current_labels(event.user_id, rec, experiments)
            if not labels:
                self.observe(event.type, "stale")
                continue
            tag = user_tag(event.user_id)
            args: list[Any] = [
                kind,
                rec,
                now,
                MARKS_TTL_S,
                self._exposure_ttl_s,
                MAX_MARKS,
            ]
            for label in labels:
                args += [label.experiment, label.revision, label.variant]
            calls.append(([tag + "xm", tag + "xe"], args))
            asked.append((event, labels))
        if not calls:
            return 0
        counted = 0
        pipe = self._redis.pipeline(transaction=False)
        for (event, labels), reply in zip(asked, await self._script.run_many(calls), strict=True):
            if isinstance(reply, Exception):
                raise reply
            if not isinstance(reply, list):  # 0: this list was counted before
                self.observe(event.type, "repeat")
                continue
            counted += 1
            self.observe(event.type, "counted")
            bucket = stats_bucket(event.user_id)
            for label, flags in zip(labels, reply, strict=True):
                key = stats_key(label.experiment, bucket, label.revision)
                for bit, field in ((4, "i"), (2, "c"), (1, "u")):
                    if int(flags) & bit:
                        pipe.hincrby(key, f"{label.variant}:{field}", 1)
                pipe.expire(key, STATS_TTL_S)
                revisions = revisions_key(label.experiment, bucket)
                pipe.zadd(revisions, {label.revision: now}, nx=True)
                pipe.expire(revisions, STATS_TTL_S)
        if len(pipe):
            await pipe.execute()
        return counted

    async def read(self, experiment: Experiment | None, name: str) -> dict[str, Any] | None:
        """The report of ``name``: the running revision (``experiment``), or the latest one that
        counted anything when it no longer runs; None when there is neither."""
        revisions = await self._revisions(name)
        revision = experiment.revision if experiment is not None else None
        if revision is None:
            if not revisions:
                return None
            revision = revisions[-1]
        counts = await self._counts(name, revision)
        return report(name, revision, experiment, counts, [r for r in revisions if r != revision])

    async def revision(self, name: str, revision: str) -> tuple[dict[str, int], list[str]] | None:
        """The counters of one revision that counted, and the other revisions; None if none."""
        revisions = await self._revisions(name)
        if revision not in revisions:
            return None
        return await self._counts(name, revision), [r for r in revisions if r != revision]

    async def _revisions(self, name: str) -> list[str]:
        """The revisions that counted in any bucket, by their first count."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(STATS_BUCKETS):
            pipe.zrange(revisions_key(name, bucket), 0, -1, withscores=True)
        first: dict[str, float] = {}
        for pairs in await pipe.execute():
            for rev, score in pairs:
                r = text(rev)
                first[r] = min(score, first.get(r, score))
        return sorted(first, key=lambda r: (first[r], r))

    async def _counts(self, name: str, revision: str) -> dict[str, int]:
        """One revision's counters, summed over the buckets."""
        pipe = self._redis.pipeline(transaction=False)
        for bucket in range(STATS_BUCKETS):
            pipe.hgetall(stats_key(name, bucket, revision))
        out: dict[str, int] = {}
        for raw in await pipe.execute():
            for k, v in raw.items():
                out[text(k)] = out.get(text(k), 0) + int(v)
        return out


def current_labels(user: str, rec: str, experiments: ExperimentSet) -> list[Label]:
    """The labels of ``rec`` that ``user``'s variants under ``experiments`` back (see the module
    docstring); empty for a malformed id."""
    parsed = parse_rec_id(rec)
    labels = labels_of(parsed[1]) if parsed is not None else None
    out: list[Label] = []
    for label in labels or ():
        experiment = experiments.get(label.experiment)
        if experiment is None or experiment.revision != label.revision:
            continue
        variant = experiment.variant_for(user)
        if variant is not None and variant.name == label.variant:
            out.append(label)
    return out


# -- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """A proportion ``successes / trials`` with its 95 % Wilson score interval."""

    successes: int
    trials: int

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    def interval(self, z: float = Z95) -> tuple[float, float] | None:
        """The Wilson score interval (sound near 0 and 1 and for small counts, unlike the
        normal approximation); None without trials."""
        n, k = self.trials, self.successes
        if n == 0:
            return None
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return max(0.0, centre - half), min(1.0, centre + half)


def compare(variant: Rate, control: Rate, z: float = Z95) -> dict[str, Any] | None:
    """A variant against the control: the difference of rates with its 95 % interval (Newcombe's
    hybrid score method, from both Wilson intervals), the relative lift, and the two-sided
    p-value of the pooled two-proportion z-test. None when either has no trials."""
    p1, p0 = variant.value, control.value
    i1, i0 = variant.interval(z), control.interval(z)
    if p1 is None or p0 is None or i1 is None or i0 is None:
        return None
    diff = p1 - p0
    low = diff - math.sqrt((p1 - i1[0]) ** 2 + (i0[1] - p0) ** 2)
    high = diff + math.sqrt((i1[1] - p1) ** 2 + (p0 - i0[0]) ** 2)
    pooled = (variant.successes + control.successes) / (variant.trials + control.trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / variant.trials + 1 / control.trials))
    p_value = 1.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
    return {
        "difference": diff,
        "ci95": [low, high],
        "lift": diff / p0 if p0 > 0 else None,
        "p_value": p_value,
        "significant": p_value < 0.05,
    }


def report(
    name: str,
    revision: str,
    experiment: Experiment | None,
    counts: dict[str, int],
    other_revisions: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON report of one revision: per variant users, impressions, clicks, CTR and its
    interval, and the comparison with the control. Variants of the running definition come
    first, in its order (with zeros when nothing counted yet)."""
    names = [v.name for v in experiment.variants] if experiment is not None else []
    for key in sorted(counts):
        variant = key.rpartition(":")[0]
        if variant not in names:
            names.append(variant)
    control = experiment.control.name if experiment is not None else (names[0] if names else "")
    rates = {v: Rate(counts.get(f"{v}:c", 0), counts.get(f"{v}:i", 0)) for v in names}
    variants = []
    for v in names:
        rate = rates[v]
        entry: dict[str, Any] = {
            "name": v,
            "users": counts.get(f"{v}:u", 0),
            "impressions": rate.trials,
            "clicks": rate.successes,
            "ctr": rate.value,
            "ci95": list(ci) if (ci := rate.interval()) is not None else None,
        }
        if experiment is not None:
            weights = {x.name: x.weight for x in experiment.variants}
            entry["share"] = weights.get(v, 0) / sum(weights.values())
        if v != control:
            entry["vs_control"] = compare(rate, rates[control]) if control in rates else None
        variants.append(entry)
    return {
        "name": name,
        "revision": revision,
        "running": experiment is not None,
        "definition": experiment.to_dict() if experiment is not None else None,
        "control": control,
        "variants": variants,
        "other_revisions": list(other_revisions),
    }
