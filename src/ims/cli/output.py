"""Printing records: an aligned text table (default), JSON, or TOML as `cray ... --format toml` gives it."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import tomli_w


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    toml = "toml"


def table_width() -> int | None:
    """The terminal's width when stdout is one (COLUMNS wins), else None: piped tables keep every column."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((120, 24)).columns


def render(
    data: Any,
    fmt: OutputFormat,
    columns: Sequence[str] = (),
    *,
    width: int | None = None,
    on_drop: Callable[[Sequence[str]], None] | None = None,
) -> str:
    if fmt is OutputFormat.json:
        return json.dumps(data, indent=2)
    if fmt is OutputFormat.toml:
        return render_toml(data)
    if isinstance(data, list):
        return render_table(data, columns, width=width, on_drop=on_drop)
    if isinstance(data, dict):
        return render_fields(data)
    return "" if data is None else str(data)


def render_toml(data: Any) -> str:
    """TOML needs a table at the top and has no null: lists go under `results` (as cray prints them), nulls go."""
    if data is None:
        return ""
    top = {"results": data} if isinstance(data, list) else data
    if not isinstance(top, dict):
        top = {"result": data}
    return tomli_w.dumps(_drop_none(top)).rstrip("\n")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_none(item) for item in value if item is not None]
    return value


def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """`{"link": {"path": p}}` -> `{"link.path": p}`; list items get `[i]`. Empty containers stay as `[]`/`{}`."""
    if isinstance(record, dict) and record:
        flat: dict[str, Any] = {}
        for key, value in record.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(record, list) and record:
        flat = {}
        for index, value in enumerate(record):
            flat.update(flatten(value, f"{prefix}[{index}]"))
        return flat
    return {prefix: record}


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value) if value else ("{}" if isinstance(value, dict) else "[]")
    return str(value).replace("\n", "\\n")


def render_fields(record: dict[str, Any]) -> str:
    rows = [(key, cell(value)) for key, value in flatten(record).items()]
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}".rstrip() for key, value in rows)


MIN_CELL = 12  # a column narrower than this is not worth keeping truncated
GAP = 2


def _line_width(widths: Sequence[int]) -> int:
    return sum(widths) + GAP * max(len(widths) - 1, 0)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def render_table(
    records: Sequence[Any],
    columns: Sequence[str] = (),
    *,
    width: int | None = None,
    on_drop: Callable[[Sequence[str]], None] | None = None,
) -> str:
    """Aligned columns. With `width`, the table fits it: columns go from the right (the first, the id, always
    stays), then the widest remaining cells are cut with `…`. Without it, every column at full width."""
    flat = [flatten(record) for record in records]
    if not columns:
        columns = list(dict.fromkeys(key for row in flat for key in row))
    columns = list(columns)
    header = [column.upper() for column in columns]
    rows = [[cell(row.get(column)) for column in columns] for row in flat]
    widths = [max(len(text) for text in [title, *(row[i] for row in rows)]) for i, title in enumerate(header)]
    if width is not None and _line_width(widths) > width:
        keep = len(columns)
        # Drop from the right while the rest cannot fit even with every other column cut to MIN_CELL.
        while keep > 1 and _line_width([widths[0], *(min(w, MIN_CELL) for w in widths[1:keep])]) > width:
            keep -= 1
        while keep > 1 and _line_width(widths[:keep]) > width and _fits_cut(widths[:keep], width) is None:
            keep -= 1
        dropped = columns[keep:]
        widths = _fits_cut(widths[:keep], width) or widths[:keep]
        header = [_truncate(title, widths[i]) for i, title in enumerate(header[:keep])]
        rows = [[_truncate(text, widths[i]) for i, text in enumerate(row[:keep])] for row in rows]
        if dropped and on_drop is not None:
            on_drop(dropped)
    lines = ["  ".join(text.ljust(widths[i]) for i, text in enumerate(line)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)


def _fits_cut(widths: Sequence[int], width: int) -> list[int] | None:
    """Widths after cutting the widest columns (never the first, never below MIN_CELL) to fit, or None."""
    cut = list(widths)
    while _line_width(cut) > width:
        widest = max(range(1, len(cut)), key=lambda i: cut[i], default=None)
        if widest is None or cut[widest] <= MIN_CELL:
            return None
        cut[widest] = max(MIN_CELL, cut[widest] - (_line_width(cut) - width))
    return cut
