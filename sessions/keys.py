"""Redis key names of per-user session state.

Every key of one user shares the hash tag ``{u:<id>}`` so that a Lua script may touch them together
on Redis Cluster (they land in one slot). Item-side keys live in ``streams``.
"""

from __future__ import annotations

PREFIX = "pr:"


def user_tag(user: str) -> str:
    """The common prefix of every key of ``user``."""
    return f"{PREFIX}{{u:{user}}}:"


def feed_key(user: str, feed: str) -> str:
    """The hash holding a feed's current version and body."""
    return f"{user_tag(user)}feed:{feed}"


def history_key(user: str, feed: str) -> str:
    """The capped stream of a feed's recent diffs, for resume."""
    return f"{user_tag(user)}hist:{feed}"


def channel_key(user: str) -> str:
    """The pub/sub channel carrying ``user``'s feed updates between nodes (in the user's slot)."""
    return f"{user_tag(user)}ch"
