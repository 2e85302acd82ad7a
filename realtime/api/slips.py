"""Printable access-code slips: one per candidate, with cut lines, to hand out in the hall."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

_SLIP_CSS = """
*{box-sizing:border-box}
body{font:13px/1.35 system-ui,sans-serif;margin:1.5em;color:#111}
header{margin-bottom:1em}
h1{font-size:16px;margin:0 0 .2em}
header p{margin:0;color:#444}
.slips{display:grid;grid-template-columns:repeat(2,1fr);gap:0}
.slip{border:1px dashed #777;padding:.9em 1em;break-inside:avoid;page-break-inside:avoid;
  min-height:12em;position:relative}
.slip .exam{font-weight:600;margin:0 0 .4em}
.slip .name{font-size:16px;margin:0}
.slip .meta{color:#444;margin:.1em 0 .6em}
.slip .code-label{margin:0;font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:#444}
.slip .code{font:700 22px/1.2 ui-monospace,Menlo,Consolas,monospace;letter-spacing:.08em;
  margin:0 0 .5em}
.slip .url{margin:0}
.slip .url strong{overflow-wrap:anywhere}
.slip::before{content:"\\2702";position:absolute;top:-.75em;left:.5em;background:#fff;
  color:#777;font-size:12px;line-height:1}
.empty{color:#444}
@media print{
  body{margin:0}
  header{display:none}
  .slips{gap:0}
  @page{margin:10mm}
}
"""


def slip(session: dict[str, Any], exam_title: str, candidate_url: str) -> str:
    """One slip: exam, candidate, their access code and where to enter it."""
    e = html.escape
    meta = " · ".join(x for x in (session.get("candidate_id", ""), session.get("group", "")) if x)
    return (
        '<section class="slip">'
        f'<p class="exam">{e(exam_title)}</p>'
        f'<p class="name">{e(str(session.get("candidate_name", "")))}</p>'
        f'<p class="meta">{e(str(meta))}</p>'
        '<p class="code-label">Access code</p>'
        f'<p class="code">{e(str(session["access_code"]))}</p>'
        f'<p class="url">Open <strong>{e(candidate_url)}</strong> and enter the code.</p>'
        "</section>\n"
    )


def slips_page(
    exam_title: str, sessions: Iterable[dict[str, Any]], candidate_url: str, subtitle: str
) -> str:
    """The whole print view; the screen-only header says what is on it."""
    body = "".join(slip(s, exam_title, candidate_url) for s in sessions)
    if not body:
        body = '<p class="empty">No session of this exam has an access code.</p>'
    title = html.escape(f"Access codes · {exam_title}")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        '<meta name="robots" content="noindex">'
        f"<style>{_SLIP_CSS}</style></head><body>"
        f"<header><h1>{title}</h1><p>{html.escape(subtitle)}</p></header>"
        f'<main class="slips">{body}</main></body></html>\n'
    )
