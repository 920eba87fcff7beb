"""From a diff to the right sockets.

Feed versions and per-user history, the broker that carries a user's updates to whichever node holds
that user's sockets, the local hub of live connections, and token
verification. This package imports nothing from ``streams`` or ``push``.
"""
