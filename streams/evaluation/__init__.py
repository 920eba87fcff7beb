"""Relevance evaluation: replay a real interaction log and score what was on each user's screen.

Prequential, next-item protocol (docs/relevance.md): events are replayed in timestamp order (ties
in file order); before an event is applied, the list on that user's screen — the feed after the
user's previous event — is scored against the event's item (HR@K, MRR@K, coverage), then the
event is applied. The real-time engine goes through the real pipeline (Redis, the event script,
the recommender, versioned feed writes); the baselines go through the same loop, on the same
events, with the same scoring.

Modules: :mod:`.readers` (logs → :class:`~.readers.Dataset`), :mod:`.metrics` (pure metric
functions and the tally), :mod:`.baselines` (popular, recent, static item-to-item),
:mod:`.engine` (the real pipeline wired on a given Redis), :mod:`.harness` (the replay),
:mod:`.progress` and :mod:`.report`. Imports ``streams`` and ``sessions`` only: the caller brings
the Redis client (``push/eval_cli.py`` starts an embedded one).
"""
