"""Interaction logs → a :class:`Dataset`: a warm-up (training) part and a scored (test) part.

Formats:

- **yoochoose** — tab-separated ``SessionId ItemId Time`` (unix seconds) with a header line, as
  prepared by session-rec. A directory holding one ``*_train_full.txt`` and one ``*_test.txt``
  gives the split; a single file is split by time (``split``). The session stands in for the user.
- **rees46** — the REES46 CSV (``event_time,event_type,product_id,category_id,category_code,
  brand,price,user_id,user_session``). A last line without its newline (the sample is a file's
  head, cut off) is dropped, like any row that does not have the nine columns or has an unknown
  event type (both counted in :attr:`Dataset.skipped`). ``view``/``cart``/``purchase`` become
  ``view``/``add_to_cart``/``purchase``. The user is ``user_id`` (default) or ``user_session``;
  the category is ``category_code``, or ``category_id`` when the code is empty.
- **csv** / **jsonl** (generic) — columns (CSV header) or keys (one JSON object per line)
  ``user``, ``item``, ``ts`` and optionally ``type`` (default ``view``), ``category``,
  ``session``. ``ts`` is unix seconds (integer or decimal), unix milliseconds (an integer of at
  least 10^11) or an ISO 8601 date-time (UTC when it names no zone). ``type`` is one of ``view``,
  ``click``, ``add_to_cart`` (or ``cart``), ``purchase``. A malformed line raises
  :class:`ValueError` naming it.

Guarantees: each part is in timestamp order, ties kept in file order (a stable sort); the test
part holds only items that occur in the training part (events on other items are dropped and
counted, as session-rec does), so every item the replay touches is in the catalogue.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Event types a log may carry (the engine's item event types, minus removals).
TYPES = frozenset({"view", "click", "add_to_cart", "purchase"})
_ALIASES = {"cart": "add_to_cart"}
_MAX_ID = 128
_MS_FROM = 10**11  # a unix timestamp at least this large is in milliseconds (year 1973 in ms)
REES46_COLUMNS = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)
REES46_USER_KEYS = ("user_id", "user_session")
#: ``--dataset`` names.
FORMATS = ("yoochoose", "rees46", "csv", "jsonl")
#: Share of a single-file log used to warm up when no split is given.
DEFAULT_SPLIT = 0.8


@dataclass(frozen=True, slots=True)
class Interaction:
    """One logged interaction of a user with an item. ``ts_ms`` is unix milliseconds.

    ``session`` groups interactions for the static item-to-item model ("" = the user).
    """

    user: str
    item: str
    ts_ms: int
    type: str = "view"
    category: str = ""
    session: str = ""


@dataclass(frozen=True, slots=True)
class Dataset:
    """A replayable log: ``train`` warms up unscored, then ``test`` is scored; both in order."""

    name: str
    train: tuple[Interaction, ...]
    test: tuple[Interaction, ...]
    #: Test events dropped because their item never occurs in the training part.
    unknown_dropped: int = 0
    #: Rows of the source files that were skipped (cut-off, malformed, other event types).
    skipped: int = 0

    def catalogue(self) -> dict[str, str]:
        """Every item of the training part, mapped to its (last seen non-empty) category."""
        out: dict[str, str] = {}
        for event in self.train:
            if event.category or event.item not in out:
                out[event.item] = event.category
        return out


def in_time_order(events: Iterable[Interaction]) -> list[Interaction]:
    """``events`` sorted by timestamp; equal timestamps keep their given order."""
    return sorted(events, key=lambda e: e.ts_ms)


def split_by_fraction(
    events: Iterable[Interaction], fraction: float
) -> tuple[list[Interaction], list[Interaction]]:
    """Time-based split: the first ``fraction`` of the events (in time order), then the rest."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("the split must be a fraction strictly between 0 and 1")
    ordered = in_time_order(events)
    cut = int(len(ordered) * fraction)
    return ordered[:cut], ordered[cut:]


def make_dataset(
    name: str, train: Iterable[Interaction], test: Iterable[Interaction], *, skipped: int = 0
) -> Dataset:
    """Order both parts by time and drop test events on items the training part never saw."""
    train_sorted = in_time_order(train)
    known = {e.item for e in train_sorted}
    test_sorted = in_time_order(test)
    kept = tuple(e for e in test_sorted if e.item in known)
    return Dataset(
        name=name,
        train=tuple(train_sorted),
        test=kept,
        unknown_dropped=len(test_sorted) - len(kept),
        skipped=skipped,
    )


def load_dataset(
    kind: str, path: Path, *, split: float | None = None, user_key: str = "user_id"
) -> Dataset:
    """Read ``path`` in format ``kind`` (one of :data:`FORMATS`) and split it.

    A YOOCHOOSE directory carries its own split (``split`` must then be None); any single file
    is split by time with ``split`` (default :data:`DEFAULT_SPLIT`).
    """
    if kind not in FORMATS:
        raise ValueError(f"unknown dataset {kind!r}; one of {', '.join(FORMATS)}")
    if kind == "yoochoose" and path.is_dir():
        if split is not None:
            raise ValueError("a YOOCHOOSE directory carries its own train/test split")
        train_file = _only(path, "*_train_full.txt")
        test_file = _only(path, "*_test.txt")
        return make_dataset(
            f"yoochoose:{path.name}", read_yoochoose(train_file), read_yoochoose(test_file)
        )
    skipped = 0
    if kind == "yoochoose":
        events = read_yoochoose(path)
    elif kind == "rees46":
        events, skipped = read_rees46(path, user_key=user_key)
    else:
        events = read_generic(path, kind)
    train, test = split_by_fraction(events, DEFAULT_SPLIT if split is None else split)
    return make_dataset(f"{kind}:{path.name}", train, test, skipped=skipped)


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"{folder}: expected exactly one {pattern}, found {len(found)}")
    return found[0]


def _check_id(value: object, what: str, where: str) -> str:
    text = value if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    if not text or len(text) > _MAX_ID or not text.isprintable():
        raise ValueError(f"{where}: {what} must be 1 to {_MAX_ID} printable characters")
    return text


def read_yoochoose(path: Path) -> list[Interaction]:
    """Read a session-rec TSV (``SessionId ItemId Time``); the session is the user."""
    out: list[Interaction] = []
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header[:3] != ["SessionId", "ItemId", "Time"]:
            raise ValueError(f"{path}: expected the header SessionId, ItemId, Time")
        for n, line in enumerate(fh, 2):
            fields = line.rstrip("\n").split("\t")
            where = f"{path}:{n}"
            if len(fields) < 3:
                raise ValueError(f"{where}: expected three tab-separated fields")
            session = _check_id(fields[0], "SessionId", where)
            item = _check_id(fields[1], "ItemId", where)
            ts = _parse_ts(fields[2], where)
            out.append(Interaction(session, item, ts, "view", "", session))
    return out


def read_rees46(path: Path, *, user_key: str = "user_id") -> tuple[list[Interaction], int]:
    """Read a REES46 CSV; returns the interactions and the number of rows skipped."""
    if user_key not in REES46_USER_KEYS:
        raise ValueError(f"user_key must be one of {', '.join(REES46_USER_KEYS)}")
    user_col = REES46_COLUMNS.index(user_key)
    out: list[Interaction] = []
    skipped = 0
    with path.open(encoding="utf-8", newline="") as fh:
        lines = fh.readlines()
    if lines and not lines[-1].endswith("\n"):  # a file's head: the last line is cut off
        lines.pop()
        skipped += 1
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(header) != REES46_COLUMNS:
        raise ValueError(f"{path}: expected the REES46 header {','.join(REES46_COLUMNS)}")
    for row in reader:
        kind = _ALIASES.get(row[1], row[1]) if len(row) == len(REES46_COLUMNS) else ""
        if kind not in TYPES:
            skipped += 1
            continue
        try:
            user = _check_id(row[user_col], user_key, str(path))
            item = _check_id(row[2], "product_id", str(path))
            ts = _rees46_time(row[0])
        except ValueError:
            skipped += 1
            continue
        out.append(Interaction(user, item, ts, kind, row[4] or row[3], row[8]))
    return out, skipped


def _rees46_time(text: str) -> int:
    """``2019-10-01 00:00:00 UTC`` → unix milliseconds."""
    stamp = datetime.strptime(text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    return int(stamp.timestamp()) * 1000


def read_generic(path: Path, kind: str) -> list[Interaction]:
    """Read the generic format (``kind`` ``csv`` or ``jsonl``); see the module docstring."""
    with path.open(encoding="utf-8", newline="") as fh:
        if kind == "csv":
            reader = csv.DictReader(fh)
            missing = {"user", "item", "ts"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: the CSV header lacks {', '.join(sorted(missing))}")
            return [_generic(f"{path}:{reader.line_num}", dict(row)) for row in reader]
        if kind == "jsonl":
            return [
                _generic(f"{path}:{n}", _json_object(line, f"{path}:{n}"))
                for n, line in enumerate(fh, 1)
                if line.strip()
            ]
    raise ValueError(f"unknown generic format {kind!r}: csv or jsonl")


def _json_object(line: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise ValueError(f"{where}: not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return value


def _generic(where: str, row: dict[str, Any]) -> Interaction:
    user = _check_id(row.get("user"), "user", where)
    item = _check_id(row.get("item"), "item", where)
    ts = _parse_ts(row.get("ts"), where)
    raw_type = row.get("type") or "view"
    kind = _ALIASES.get(raw_type, raw_type) if isinstance(raw_type, str) else ""
    if kind not in TYPES:
        raise ValueError(f"{where}: type must be one of {', '.join(sorted(TYPES))} (or cart)")
    category = row.get("category") or ""
    session = row.get("session") or ""
    if not isinstance(category, str) or not isinstance(session, str):
        raise ValueError(f"{where}: category and session must be strings")
    return Interaction(user, item, ts, kind, category, session)


def _parse_ts(value: object, where: str) -> int:
    """Unix seconds, unix milliseconds (≥ 10^11) or ISO 8601 → unix milliseconds."""
    if isinstance(value, bool) or value is None or value == "":
        raise ValueError(f"{where}: ts is required")
    number: float | None = None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{where}: ts {value[:40]!r} is no timestamp") from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            return round(stamp.timestamp() * 1000)
    if number is None or number != number or number < 0:
        raise ValueError(f"{where}: ts must be a non-negative timestamp")
    return round(number) if number >= _MS_FROM else round(number * 1000)
