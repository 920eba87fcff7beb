"""Strict YAML documents: one reader with line numbers for every configuration file.

Rules (:mod:`streams.rules`) and experiments (:mod:`streams.experiments`) are read through
:class:`DocumentReader`: YAML (or JSON, which YAML reads) composed into nodes with their marks, then
checked node by node, so every error names its line. Nothing is evaluated or templated: only
plain scalars are constructed, anchors and aliases are refused where they appear (no expansion
tricks, one source line per value), and keys are taken as written (YAML 1.1 would read ``on:``
as the boolean true).
"""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

import yaml

from streams.exceptions import StreamsError

STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"

T = TypeVar("T")


class InvalidDocument(StreamsError):
    """A document failed validation: ``line`` (1-based, None when unknown) and ``reason``."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        super().__init__(
            f"{source}:{line}: {reason}" if line is not None else f"{source}: {reason}"
        )
        self.source = source
        self.line = line
        self.reason = reason


class _AliasRefused(yaml.MarkedYAMLError):
    """An alias (``*name``): refused where it appears."""


class _Loader(yaml.SafeLoader):
    """The safe loader, used only to compose nodes (with marks) and build plain scalars.

    Aliases are refused as they are met (no expansion tricks; one source line per value).
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _AliasRefused(None, None, "anchors and aliases are not supported", mark)
        return super().compose_node(parent, index)


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


class DocumentReader(Generic[T]):
    """Reads one document into a ``T``; subclasses check the root in :meth:`document`.

    Every check raises :attr:`error` (a subclass of :class:`InvalidDocument`) naming the line.
    """

    error: type[InvalidDocument] = InvalidDocument
    #: How the size limit names the document (``rules must be at most …``).
    noun = "the document"

    def __init__(self, source: str, max_bytes: int) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.loader: _Loader | None = None
        self.seen: set[int] = set()

    def fail(self, node: yaml.Node | int | None, reason: str) -> InvalidDocument:
        line = node if isinstance(node, int) or node is None else line_of(node)
        return self.error(self.source, line, reason)

    def document(self, root: yaml.Node) -> T:
        """The value of a non-empty document."""
        raise NotImplementedError

    def read(self, text: str, empty: T) -> T:
        """Parse ``text``: ``empty`` for an empty document, else :meth:`document` of its root."""
        if len(text.encode("utf-8", "surrogatepass")) > self.max_bytes:
            raise self.fail(None, f"{self.noun} must be at most {self.max_bytes} bytes")
        loader = _Loader(text)
        self.loader = loader
        try:
            root = loader.get_single_node()
            if root is None:
                return empty
            return self.document(root)
        except _AliasRefused as exc:
            assert exc.problem_mark is not None and exc.problem is not None
            raise self.fail(int(exc.problem_mark.line) + 1, exc.problem) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = None if mark is None else int(mark.line) + 1
            reason = exc.problem or exc.context or "malformed YAML"
            raise self.fail(line, f"YAML syntax: {reason}") from None
        except yaml.YAMLError as exc:
            raise self.fail(None, f"YAML: {str(exc)[:200]}") from None
        finally:
            loader.dispose()

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping's entries by key (key node, value node); duplicate or non-text keys fail."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        self.once(node)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            # A key is taken as written: YAML 1.1 would read `on:` as the boolean true.
            if not isinstance(key, yaml.ScalarNode) or key.tag not in (STR_TAG, BOOL_TAG):
                raise self.fail(key, f"{what}: keys must be plain words")
            if key.value in out:
                raise self.fail(key, f"{what}: {key.value} is given twice")
            out[key.value] = (key, value)
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        self.once(node)
        return list(node.value)

    def once(self, node: yaml.Node) -> None:
        """Anchors and aliases re-use a node: refused (no expansion tricks, one line per value)."""
        if id(node) in self.seen:
            raise self.fail(node, "anchors and aliases are not supported")
        self.seen.add(id(node))

    def scalar(self, node: yaml.Node, what: str, expected: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be {expected}")
        assert self.loader is not None
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise self.fail(node, f"{what} must be {expected}") from None

    def text(self, node: yaml.Node, what: str, *, ids: bool = False, limit: int = 200) -> str:
        """A string; with ``ids`` any unquoted scalar but null is taken as written (``item:
        0123`` is "0123", not YAML's octal 83; ``name: no`` is "no", not false)."""
        if not isinstance(node, yaml.ScalarNode) or not (
            node.tag == STR_TAG or (ids and node.tag != NULL_TAG)
        ):
            raise self.fail(node, f"{what} must be a string")
        value = str(node.value)
        if not value or len(value) > limit or not value.isprintable():
            raise self.fail(node, f"{what} must be a printable string of 1 to {limit} characters")
        return value

    def number(self, node: yaml.Node, what: str, *, low: float, high: float, rule: str) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (INT_TAG, FLOAT_TAG):
            raise self.fail(node, f"{what} must be a number {rule}")
        value = self.scalar(node, what, f"a number {rule}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, f"{what} must be a number {rule}")
        if not (math.isfinite(value) and low <= value <= high):
            raise self.fail(node, f"{what} must be a number {rule}")
        return float(value)

    def keys(
        self, node: yaml.Node, what: str, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        entries = self.mapping(node, what)
        for key, (knode, _) in entries.items():
            if key not in allowed:
                raise self.fail(
                    knode, f"unknown key {key!r} in {what} (it takes {', '.join(allowed)})"
                )
        for key in required:
            if key not in entries:
                raise self.fail(node, f"{what} needs {key}")
        return entries
