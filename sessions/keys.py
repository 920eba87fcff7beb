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
