"""Measured tables in the docs: rows kept in a JSON file next to a Markdown page, and the page's table
between two markers rewritten from them, so one recipe can be re-measured without redoing the rest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def merge_rows(
    rows: list[dict], results: Path, key: str, order: Sequence[str], carry: Sequence[str] = ()
) -> list[dict]:
    """`rows` measured now, plus the rows in `results` (JSON) for keys not measured now, sorted by
    `order` (keys not in it last, by name). A row measured now takes a `carry` field it lacks (e.g. a
    training time when only re-evaluated) from its earlier row; the merged rows are written back."""
    earlier = {r[key]: r for r in json.loads(results.read_text())} if results.exists() else {}
    for row in rows:
        for field in carry:
            if (
                row.get(field) is None
                and earlier.get(row[key], {}).get(field) is not None
                and "missing" not in row
            ):
                row[field] = earlier[row[key]][field]
    measured = {r[key] for r in rows}
    merged = rows + [r for k, r in earlier.items() if k not in measured]
    rank = {k: i for i, k in enumerate(order)}
    merged.sort(key=lambda r: (rank.get(r[key], len(rank)), r[key]))
    results.write_text(json.dumps(merged, indent=2))
    return merged


def write_marked(path: Path, name: str, table: str, title: str) -> None:
    """Put `table` between `<!-- name:begin -->` and `<!-- name:end -->` in the page at `path` (created
    with `title` when missing), keeping everything around the markers."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else f"# {title}\n\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
