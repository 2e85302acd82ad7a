"""Parameters several operations take alike, described once for the OpenAPI document.

An operation's docstring names a set as `- {shared: <name>}` in its `parameters`; the
document is served with the set written out in its place (`with_shared_parameters`), so a
client reads every operation's parameters whole, as if each docstring listed them. Each set
is what one parser reads (history_query's `parse_range` and `parse_history_filter`, the
reports' format), so a change to the parser has one description to follow.
"""

from __future__ import annotations

import copy
from typing import Any


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": kind}, "description": description}


_FROM = _query("from", "string", "ISO-8601, inclusive")
_TO = _query("to", "string", "ISO-8601, exclusive")
_AFTER_SEQ = _query("after_seq", "integer", "page forward")
_BEFORE_SEQ = _query("before_seq", "integer", "page backward")
_LIMIT = _query("limit", "integer", "1..1000 (1000)")
_EXCLUDE = _query("exclude", "string", "e.g. progress,delivered")

SHARED_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    # parse_range: a time range
    "range": [_FROM, _TO],
    # parse_history_filter for a page of history as JSON
    "history_page": [_FROM, _TO, _AFTER_SEQ, _BEFORE_SEQ, _LIMIT, _EXCLUDE],
    # parse_history_filter for an export, which reads every page
    "history_export": [_FROM, _TO, _EXCLUDE],
    # a report's format: the path's `.csv` or `.html`
    "report_format": [
        {"name": "fmt", "in": "path", "required": True,
         "schema": {"type": "string", "enum": ["csv", "html"]}},
    ],
}


def with_shared_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """Write out every `{shared: <name>}` among the operations' parameters in its place."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            listed = operation.get("parameters")
            if not listed:
                continue
            operation["parameters"] = [
                written
                for parameter in listed
                for written in (
                    copy.deepcopy(SHARED_PARAMETERS[parameter["shared"]])
                    if "shared" in parameter else [parameter]
                )
            ]
    return document
