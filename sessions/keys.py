"""Redis key names of per-user session state.

Every key of one user shares the hash tag ``{u:<id>}`` so that a Lua script may touch them together
on Redis Cluster (they land in one slot). Item-side keys live in ``streams``.

User ids are free text (a token's ``sub``, an event's ``user_id``), so the id goes into key names
encoded (:func:`encode_user`): ``%``, ``{``, ``}``, the glob specials ``*?[]\\`` and control
characters are percent-encoded, everything else is kept. Hence:

- ordinary ids keep their key names (``alice`` is ``pr:{u:alice}:…``), so existing data stays
  where it is;
- the tag's closing ``}`` is the first ``}`` of the name, so no user's tag ``pr:{u:<id>}:`` is a
  prefix of another user's key (``tagx}:evil`` is ``pr:{u:tagx%7D:evil}:…``, which
  ``pr:{u:tagx}:*`` does not match), and Redis Cluster's hash tag is exactly the encoded id;
- an encoded id holds no glob special, so ``SCAN MATCH <tag>*`` finds exactly one user's keys;
- the encoding is one to one (``%`` itself is encoded): :func:`decode_user` gives the id back.

Every key name, channel name and the session-kNN index (``pr:is:<item>``, whose members the event
script turns into key names) use this one function; nothing else may build a user's tag.
"""

from __future__ import annotations

import re
import zlib

PREFIX = "pr:"

#: What is encoded in a user's key names: ``%{}*?[]\\`` and the control characters (Cc).
_ENCODED = re.compile(r"[%{}*?\[\]\\\x00-\x1f\x7f-\x9f]")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_user(user: str) -> str:
    """``user`` as it appears in key names: ``%XX`` (upper-case hex) for ``%{}*?[]\\`` and the
    control characters (U+0000 to U+001F, U+007F to U+009F), every other character as is."""
    if _ENCODED.search(user) is None:
        return user  # the common case, and what keeps ordinary ids' key names unchanged
    return _ENCODED.sub(lambda m: f"%{ord(m.group()):02X}", user)


def decode_user(encoded: str) -> str:
    """The user id :func:`encode_user` turned into ``encoded``; raises :class:`ValueError` for
    text it never produces (a bare special character, a malformed or needless escape)."""
    out: list[str] = []
    i = 0
    while i < len(encoded):
        escape = _ESCAPE.match(encoded, i)
        char = chr(int(escape.group(1), 16)) if escape else encoded[i]
        if (escape is None) == (_ENCODED.fullmatch(char) is not None):
            raise ValueError(f"not an encoded user id (at {i})")
        out.append(char)
        i += 3 if escape else 1
    return "".join(out)


def user_tag(user: str) -> str:
    """The common prefix of every key of ``user`` (the id encoded, see the module docstring)."""
    return f"{PREFIX}{{u:{encode_user(user)}}}:"


def feed_key(user: str, feed: str) -> str:
    """The hash holding a feed's current version and body."""
    return f"{user_tag(user)}feed:{feed}"


def history_key(user: str, feed: str) -> str:
    """The capped history of a feed's recent diffs, for resume."""
    return f"{user_tag(user)}hist:{feed}"


def channel_key(user: str) -> str:
    """The pub/sub channel carrying ``user``'s feed updates between nodes (in the user's slot)."""
    return f"{user_tag(user)}ch"


# --- Item-side and trending keys (issue 13: the event path split) -------------------------------
# Tagged by item, by trend bucket or by category, so that every script call touches one slot:
# the user lane (streams/lua/user_event.lua) only the user's, each aggregate write (streams/
# aggregates.py) only one item's, one bucket's or one category's.

#: Item ids and category names are encoded in their tags exactly as user ids are.
encode_part = encode_user

#: Default number of trending buckets (``PUSHREC_TREND_BUCKETS``).
TREND_BUCKETS = 16


def item_tag(item: str) -> str:
    """The common prefix of every item-side key of ``item`` (the id encoded)."""
    return f"{PREFIX}{{i:{encode_part(item)}}}:"


def neighbours_key(item: str) -> str:
    """Co-visitation neighbours of ``item`` (zset neighbour → weight, capped)."""
    return f"{item_tag(item)}nb"


def complements_key(item: str) -> str:
    """Complements of ``item``: items carted or bought together (zset, capped)."""
    return f"{item_tag(item)}cb"


def visitors_key(item: str) -> str:
    """Users who touched ``item`` lately, the session-kNN index (zset encoded user id → ts)."""
    return f"{item_tag(item)}is"


def model_neighbours_key(version: str, item: str) -> str:
    """Offline model neighbours of ``item`` under model ``version`` (``pushrec train``)."""
    return f"{item_tag(item)}nbm:{version}"


def _bucket(text: str, buckets: int) -> int:
    """The bucket of ``text``: crc32 of its UTF-8 bytes modulo ``buckets``."""
    return zlib.crc32(text.encode()) % buckets


def trend_bucket(item: str, buckets: int = TREND_BUCKETS) -> int:
    """The trending bucket ``item`` counts in: crc32 of its id modulo ``buckets``."""
    return _bucket(item, buckets)


def trend_key(bucket: int) -> str:
    """One bucket of global trending (zset item → decayed popularity)."""
    return f"{PREFIX}{{t:{bucket}}}:trend"


def trend_meta_key(bucket: int) -> str:
    """A trending bucket's meta hash: decay origin ``t0``, ``users`` (its share of users seen)."""
    return f"{PREFIX}{{t:{bucket}}}:meta"


def category_trend_key(category: str) -> str:
    """Trending items of one category (zset item → decayed popularity)."""
    return f"{PREFIX}{{c:{encode_part(category)}}}:trend"


def category_meta_key(category: str) -> str:
    """A category's meta hash: decay origin ``t0`` of its trending zset."""
    return f"{PREFIX}{{c:{encode_part(category)}}}:meta"


# --- Everything else on one slot per call (issue 13: indexes, timers, merges, stats, model) -----
# Each family below is written by scripts or commands that touch one slot per call: the feed
# index per item (sessions/feeds.py), timers per bucket (streams/triggers.py), the merge marker
# and a merge's snapshot in the visitor's slot (streams/merge.py), experiment
# counters per experiment and bucket (streams/experiment_stats.py), the model pointer alone.

#: Buckets of the durable timers: a user's timers live in one bucket (crc32 of the id), each
#: claim touches one bucket; claimers visit every bucket.
TIMER_BUCKETS = 16
#: Buckets of each experiment's counters: a user's counts go to one bucket, readers sum them.
STATS_BUCKETS = 8
#: The pointer hash of the offline model: field ``nb`` the current version; fields
#: ``v:<version>`` the versions written and not yet removed (value: load start, ms).
MODEL_KEY = f"{PREFIX}model"


def shown_key(item: str, feed: str) -> str:
    """Users whose stored ``feed`` shows ``item`` (zset user id → ms last confirmed)."""
    return f"{item_tag(item)}shown:{feed}"


def timer_bucket(user: str, buckets: int = TIMER_BUCKETS) -> int:
    """The timers bucket holding ``user``'s timers."""
    return _bucket(user, buckets)


def timers_key(bucket: int) -> str:
    """One bucket of pending timers (zset member → due ms)."""
    return f"{PREFIX}{{tm:{bucket}}}:timers"


def claimed_key(bucket: int) -> str:
    """One bucket of claimed timers (zset member → lease end ms), beside :func:`timers_key`."""
    return f"{PREFIX}{{tm:{bucket}}}:claimed"


def merged_key(anon: str) -> str:
    """In visitor ``anon``'s slot: the user the visitor was merged into (``identify``)."""
    return f"{user_tag(anon)}merged"


def merging_key(anon: str) -> str:
    """In visitor ``anon``'s slot: the snapshot of a merge under way (taken, not yet finished)."""
    return f"{user_tag(anon)}merging"


def stats_bucket(user: str, buckets: int = STATS_BUCKETS) -> int:
    """The experiment-counter bucket ``user``'s counts go to."""
    return _bucket(user, buckets)


def stats_key(experiment: str, bucket: int, revision: str) -> str:
    """One bucket of the counters of one revision of an experiment (hash
    ``<variant>:i|c|u`` → count)."""
    return f"{PREFIX}{{x:{encode_part(experiment)}:{bucket}}}:s:{revision}"


def revisions_key(experiment: str, bucket: int) -> str:
    """One bucket's revisions of an experiment that counted anything (zset revision → first
    count, ms)."""
    return f"{PREFIX}{{x:{encode_part(experiment)}:{bucket}}}:revs"


def encoded_user_tag(encoded: str) -> str:
    """The tag of the user whose id encodes to ``encoded`` (a session-index member, which is
    :func:`encode_user`'s output already): ``user_tag(decode_user(encoded))``, without the round
    trip."""
    return f"{PREFIX}{{u:{encoded}}}:"
