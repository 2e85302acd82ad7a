"""axe-core (from the npm registry, tests/browser/package.json) injected into a page by
Playwright: the page's serious and critical accessibility violations, readably."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = {"serious", "critical"}

RUN = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    nodes: v.nodes.map((n) => ({ target: n.target.join(" "), summary: n.failureSummary })),
  }));
}"""


def require_axe() -> Path:
    """The path of axe.min.js; fails (not skips) when it is not installed: CI installs it."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `npm ci --prefix tests/browser` (.ci/run does)")
    return AXE


async def blocking_violations(page: Any) -> list[str]:
    """One line per serious or critical violation on the page as it is now (empty: none)."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(require_axe()))
    violations: list[dict[str, Any]] = await page.evaluate(RUN)
    lines = []
    for v in violations:
        if v["impact"] not in BLOCKING:
            continue
        for node in v["nodes"][:6]:
            summary = " ".join(str(node["summary"]).split())
            lines.append(f"{v['impact']} {v['id']} ({v['help']}): {node['target']}: {summary}")
    return lines


async def assert_accessible(page: Any, where: str) -> None:
    """No serious or critical axe-core violation on `page`; `where` names the state checked."""
    lines = await blocking_violations(page)
    assert not lines, f"axe-core, {where}:\n" + "\n".join(lines)
