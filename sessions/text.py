"""Redis replies as text: one conversion for every reader of string fields.

redis-py returns ``bytes`` (or ``str`` on a client that decodes); ids and fields pushrec stores
are UTF-8. Bytes that are not (written by someone else) decode with ``surrogateescape`` so a bad
value never raises here and round-trips unchanged when encoded the same way.
"""

from __future__ import annotations


def text(value: object) -> str:
    """``value`` as ``str``: bytes decoded as UTF-8 (``surrogateescape``), else ``str()``."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


__all__ = ["text"]
