"""Business rules shared by every node (:mod:`streams.docstore`): ``pr:rules`` in Redis, announced
on the ``pr:rules`` channel, fed by the optional rules file (``PUSHREC_RULES_FILE``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from streams.docstore import DocumentFile, DocumentKind, DocumentStore, Observer
from streams.rules import EMPTY, RuleSet, parse_rules

RULES_KEY = "pr:rules"
RULES_CHANNEL = "pr:rules"

RULES: DocumentKind[RuleSet] = DocumentKind(
    name="rules",
    key=RULES_KEY,
    channel=RULES_CHANNEL,
    parse=lambda text, source: parse_rules(text, source=source),
    with_version=RuleSet.with_version,
    empty=EMPTY,
)


def _ignore(_source: str, _outcome: str) -> None:
    return None


class RulesStore(DocumentStore[RuleSet]):
    """The rules in force on this node, kept equal to Redis's; ``apply`` gets every new set."""

    def __init__(
        self, redis: Redis, apply: Callable[[RuleSet], None], *, observe: Observer = _ignore
    ) -> None:
        super().__init__(redis, RULES, apply, observe=observe)


class RulesFile(DocumentFile[RuleSet]):
    """Polls the rules file; ``known_item`` (when given) makes a pin of an unknown item an
    error."""

    def __init__(
        self,
        path: Path,
        store: DocumentStore[RuleSet],
        *,
        known_item: Callable[[str], bool] | None = None,
        interval_s: float = 1.0,
        observe: Observer = _ignore,
    ) -> None:
        super().__init__(
            path,
            store,
            parse=lambda text, source: parse_rules(text, source=source, known_item=known_item),
            interval_s=interval_s,
            observe=observe,
        )
