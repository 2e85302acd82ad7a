"""What reports show: actors by name, and rows of sessions, events and irregularities as CSV
(safe in spreadsheets) or as a print-friendly HTML table, streamed page by page."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from realtime.db.database import Database
from realtime.identity.csvutil import csv_lines, iso
from realtime.state import incidents

_DIGITS = re.compile(r"(\d+)")

# The event details that get columns of their own; the rest go into `details` as JSON.
_OWN_DETAIL_COLUMNS = ("reason", "remote_addr", "user_agent")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sorts "Candidate 2" before "Candidate 10": digit runs compare as numbers, the rest
    case-insensitively."""
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part.casefold())
        for part in _DIGITS.split(text) if part
    )


class ActorNames:
    """Names for history actors: `staff:<user id>` by the user's full name (looked up once per
    id), `candidate:…` by the session's candidate name, anything else as it is."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._staff: dict[str, str] = {}

    async def name_all(
        self, events: Sequence[dict[str, Any]], candidate_name: Callable[[str], str]
    ) -> None:
        """Set `actor_name` on each event dict (its raw `actor` is kept)."""
        wanted = {
            ident
            for e in events
            for kind, _, ident in [str(e.get("actor", "")).partition(":")]
            if kind == "staff" and ident not in self._staff
        }
        if wanted:
            found = await self.db.staff_names(wanted)
            self._staff.update({ident: found.get(ident, ident) for ident in wanted})
        for e in events:
            actor = str(e.get("actor", ""))
            kind, _, ident = actor.partition(":")
            if kind == "staff":
                e["actor_name"] = self._staff.get(ident, ident)
            elif kind == "candidate":
                e["actor_name"] = candidate_name(str(e.get("session_id", ""))) or ident
            else:
                e["actor_name"] = actor


@dataclass(frozen=True, slots=True)
class Table:
    """A report: a title, its columns, and the rows page by page."""

    title: str
    header: Sequence[str]
    pages: AsyncIterator[list[list[Any]]]


SESSION_COLUMNS = (
    "session_id", "candidate_id", "candidate_name", "group", "access_code", "status", "locked",
    "connected", "authorized", "started_at", "deadline", "extra_minutes", "paused_at",
    "position", "answered", "reconnects", "alerts", "last_alert", "remote_addr", "last_seen",
    "incidents", "last_incident", "last_incident_text", "last_incident_at", "offline_seconds",
)


def session_row(s: dict[str, Any], now: float) -> list[Any]:
    """One session; `offline_seconds` includes the spell still going on at `now`."""
    return [
        s["id"], s["candidate_id"], s["candidate_name"], s["group"], s["access_code"],
        s["status"], s["locked"], s["connected"], s["authorized"], iso(s["started_at"]),
        iso(s["deadline"]), s["extra_minutes"], iso(s["paused_at"]), s["position"],
        s["answered"], s["reconnects"], s["alerts"], s["last_alert"], s["remote_addr"],
        iso(s["last_seen"]), s.get("incidents") or 0, s.get("last_incident") or "",
        s.get("last_incident_text") or "", iso(s.get("last_incident_at")),
        round(incidents.offline_total(s, now)),
    ]


EVENT_COLUMNS = (
    "seq", "at", "session_id", "candidate_id", "candidate_name", "kind", "before", "after",
    "actor", "actor_name", *_OWN_DETAIL_COLUMNS, "details",
)


def event_row(e: dict[str, Any], candidate: tuple[str, str, str]) -> list[Any]:
    """An event dict (with `actor_name`) and its session's (candidate id, name, group)."""
    details = dict(e.get("details") or {})
    own = [details.pop(k, "") for k in _OWN_DETAIL_COLUMNS]
    rest = json.dumps(details, sort_keys=True, ensure_ascii=False) if details else ""
    return [
        e["seq"], iso(e["at"]), e["session_id"], candidate[0], candidate[1], e["kind"],
        e.get("before") or "", e.get("after") or "", e["actor"], e.get("actor_name", ""),
        *own, rest,
    ]


IRREGULARITY_COLUMNS = (
    "id", "at", "session_id", "candidate_id", "candidate_name", "group", "category", "note",
    "actor", "actor_name",
)


def irregularity_row(r: dict[str, Any], candidate: tuple[str, str, str]) -> list[Any]:
    return [
        r["id"], iso(r["at"]), r["session_id"], candidate[0], candidate[1], candidate[2],
        r["category"], r["note"], r["actor"], r.get("actor_name", ""),
    ]


async def csv_body(table: Table) -> AsyncIterator[str]:
    """The header, then one CSV chunk per page."""
    yield csv_lines([table.header])
    async for rows in table.pages:
        yield csv_lines(rows)


_PRINT_CSS = """
body{font:12px/1.35 system-ui,sans-serif;margin:1.5em;color:#111}
h1{font-size:16px;margin:0 0 .3em}
p{margin:0 0 1em;color:#444}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #bbb;padding:2px 4px;text-align:left;vertical-align:top}
th{background:#eee}
thead{display:table-header-group}
tr{break-inside:avoid}
@media print{body{margin:0}}
"""


async def html_body(table: Table, subtitle: str) -> AsyncIterator[str]:
    """A print-friendly page: the table with its header repeated on every printed page."""
    title = html.escape(table.title)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.header)
    yield (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_PRINT_CSS}</style></head><body><h1>{title}</h1>"
        f"<p>{html.escape(subtitle)}</p><table><thead><tr>{head}</tr></thead><tbody>\n"
    )
    async for rows in table.pages:
        yield "".join(_html_row(row) for row in rows)
    yield "</tbody></table></body></html>\n"


def _html_row(row: Iterable[Any]) -> str:
    cells = "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
    return f"<tr>{cells}</tr>\n"
