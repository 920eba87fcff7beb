"""Derive the demo catalog (JSON Lines) from a slice of the REES46 event log.

Source: REES46, "eCommerce behavior data from multi category store" (Kaggle,
https://www.kaggle.com/datasets/mkechinov/ecommerce-behavior-data-from-multi-category-store),
the first hours of October 2019 (``2019-Oct.csv``). The data is free to use with credit to REES46
(https://rees46.com) and the Kaggle page. Columns::

    event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session

The slice is a file's head, so its last line may be cut off mid-row: when the file does not end
with a newline the last line is dropped, and any other malformed row is skipped and counted.

Output: one item per line, sorted by numeric ``item_id``, in the shape the server loads::

    {"item_id": "1004856", "title": "Samsung smartphone", "price": 130.76,
     "category": "electronics.smartphone", "image": "/shop/img/electronics.svg", "in_stock": true,
     "props": {"brand": "samsung", "category_code": "electronics.smartphone", "views": 12}}

``price`` is the last price seen for the item, ``views`` counts its ``view`` events (carts and
purchases count towards keeping the item, not towards ``views``). The output depends only on the
input, so regenerating it gives the same bytes.

Usage: ``python examples/catalog/derive_rees46.py INPUT.csv -o examples/catalog/rees46.jsonl``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

COLUMNS = (
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
EVENT_TYPES = frozenset({"view", "cart", "purchase"})

MISC = "misc"
"""Category given to items that have no ``category_code`` in the log."""

IMAGE_CATEGORIES = frozenset(
    {
        "electronics",
        "appliances",
        "computers",
        "furniture",
        "apparel",
        "auto",
        "construction",
        "kids",
        "sport",
        "accessories",
        "medicine",
        "country_yard",
        "stationery",
        MISC,
    }
)
"""Top-level categories with a placeholder icon in ``examples/shop/img/``."""

IMAGE_URL = "/shop/img/{}.svg"

# Brand names and leaf words that read better in capitals than in title case.
BRAND_CAPS = frozenset({"aeg", "amd", "aoc", "bbk", "bq", "dji", "hp", "jbl", "jvc", "lg", "msi"})
BRAND_CAPS |= {"tcl", "tp", "zte"}
LEAF_CAPS = frozenset({"cpu", "hdd", "tv"})


@dataclass
class Item:
    """What the log says about one product; the last row seen wins for price, brand and category."""

    item_id: str
    category_id: str
    category_code: str
    brand: str
    price: float
    views: int = 0


@dataclass
class Stats:
    """Counts reported on stderr so a regeneration can be checked at a glance."""

    rows: int = 0
    skipped: int = 0
    truncated_tail: bool = False


def complete_lines(stream: TextIO, stats: Stats) -> Iterator[str]:
    """Yield the stream's lines, dropping a last line that has no newline (a cut-off row)."""
    held: str | None = None
    for line in stream:
        if held is not None:
            yield held
        held = line
    if held is not None:
        if held.endswith("\n"):
            yield held
        else:
            stats.truncated_tail = True


def parse_price(text: str) -> float | None:
    """A finite, non-negative price, or ``None`` when the field is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def collect(rows: Iterable[list[str]], stats: Stats) -> dict[str, Item]:
    """Fold the event rows into one ``Item`` per product id."""
    items: dict[str, Item] = {}
    for row in rows:
        stats.rows += 1
        if len(row) != len(COLUMNS):
            stats.skipped += 1
            continue
        _time, event_type, product_id, category_id, category_code, brand, price_text = row[:7]
        price = parse_price(price_text)
        if event_type not in EVENT_TYPES or not product_id.isdigit() or price is None:
            stats.skipped += 1
            continue
        item = items.get(product_id)
        if item is None:
            item = items[product_id] = Item(product_id, category_id, category_code, brand, price)
        else:
            item.price = price
            item.category_id = category_id or item.category_id
            item.category_code = category_code or item.category_code
            item.brand = brand or item.brand
        if event_type == "view":
            item.views += 1
    return items


def pretty_word(word: str) -> str:
    """``samsung`` -> ``Samsung``, ``tp-link`` -> ``TP-Link``, ``lg`` -> ``LG``."""
    parts = word.split("-")
    return "-".join(p.upper() if p in BRAND_CAPS else p[:1].upper() + p[1:] for p in parts)


def title_for(item: Item) -> str:
    """A short human-readable name: brand plus the last part of the category code."""
    brand = pretty_word(item.brand) if item.brand else ""
    if item.category_code:
        leaf = item.category_code.rsplit(".", 1)[-1].replace("_", " ")
        leaf = leaf.upper() if leaf in LEAF_CAPS else leaf
        return f"{brand} {leaf}" if brand else leaf[:1].upper() + leaf[1:]
    return f"{brand} item {item.item_id}" if brand else f"Item {item.item_id}"


def to_record(item: Item) -> dict[str, object]:
    """The catalog line for one item."""
    category = item.category_code or MISC
    top = category.split(".", 1)[0]
    return {
        "item_id": item.item_id,
        "title": title_for(item),
        "price": round(item.price, 2),
        "category": category,
        "image": IMAGE_URL.format(top if top in IMAGE_CATEGORIES else MISC),
        "in_stock": True,
        "props": {
            "brand": item.brand or None,
            "category_code": item.category_code or None,
            "views": item.views,
        },
    }


def derive(source: TextIO, sink: TextIO) -> tuple[Stats, int, int]:
    """Write the catalog for ``source`` to ``sink``; return stats, item count and category count."""
    stats = Stats()
    reader = csv.reader(complete_lines(source, stats))
    header = next(reader, None)
    if header is None or tuple(header) != COLUMNS:
        raise SystemExit(f"unexpected header {header!r}; expected {','.join(COLUMNS)}")
    items = collect(reader, stats)
    categories: set[str] = set()
    for item_id in sorted(items, key=int):
        record = to_record(items[item_id])
        categories.add(str(record["category"]))
        sink.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    return stats, len(items), len(categories)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("input", type=Path, help="REES46 CSV (e.g. 2019-Oct_head.csv)")
    parser.add_argument("-o", "--output", type=Path, help="JSONL file to write (default: stdout)")
    args = parser.parse_args(argv)
    with args.input.open(encoding="utf-8", newline="") as source:
        if args.output is None:
            stats, n_items, n_categories = derive(source, sys.stdout)
        else:
            with args.output.open("w", encoding="utf-8", newline="\n") as sink:
                stats, n_items, n_categories = derive(source, sink)
    print(
        f"{stats.rows} rows read, {stats.skipped} skipped, "
        f"cut-off last line dropped: {'yes' if stats.truncated_tail else 'no'}; "
        f"{n_items} items in {n_categories} categories",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
