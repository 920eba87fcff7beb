"""Derive the demo's warm-up traffic from the REES46 sample log.

Source: REES46 "eCommerce behavior data from multi category store" (Kaggle), the first hours of
October 2019 (``shared/data/rees46-2019oct-sample/2019-Oct_head.csv``); free to use with credit to
REES46. Output: TSV ``ts_ms user type item`` (view / add_to_cart / purchase), in log order, with the
cut-off last line and malformed rows dropped. ``pushrec demo`` replays it at start.

Usage: python examples/catalog/derive_rees46_events.py CSV OUT.tsv
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from pathlib import Path

TYPES = {"view": "view", "cart": "add_to_cart", "purchase": "purchase"}


def main(src: Path, out: Path) -> int:
    """Write the TSV; returns the number of events written."""
    with src.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:-1]  # the last line of the sample is cut off
    col = {name: i for i, name in enumerate(header)}
    written = 0
    with out.open("w", encoding="utf-8") as fh:
        fh.write("ts_ms\tuser\ttype\titem\n")
        for row in body:
            if len(row) != len(header) or row[col["event_type"]] not in TYPES:
                continue
            when = datetime.strptime(row[col["event_time"]], "%Y-%m-%d %H:%M:%S UTC").replace(
                tzinfo=UTC
            )
            ts_ms = int(when.timestamp() * 1000)
            fh.write(
                f"{ts_ms}\t{row[col['user_id']]}\t{TYPES[row[col['event_type']]]}"
                f"\t{row[col['product_id']]}\n"
            )
            written += 1
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"wrote {main(Path(sys.argv[1]), Path(sys.argv[2]))} events")
