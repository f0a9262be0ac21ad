"""Printing records: an aligned text table (default), JSON, or TOML as `cray ... --format toml` gives it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import tomli_w


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    toml = "toml"


def render(data: Any, fmt: OutputFormat, columns: Sequence[str] = ()) -> str:
    if fmt is OutputFormat.json:
        return json.dumps(data, indent=2)
    if fmt is OutputFormat.toml:
        return render_toml(data)
    if isinstance(data, list):
        return render_table(data, columns)
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


def render_table(records: Sequence[Any], columns: Sequence[str] = ()) -> str:
    flat = [flatten(record) for record in records]
    if not columns:
        columns = list(dict.fromkeys(key for row in flat for key in row))
    header = [column.upper() for column in columns]
    rows = [[cell(row.get(column)) for column in columns] for row in flat]
    widths = [max(len(text) for text in [title, *(row[i] for row in rows)]) for i, title in enumerate(header)]
    lines = ["  ".join(text.ljust(widths[i]) for i, text in enumerate(line)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)
