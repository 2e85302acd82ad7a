// The Nodes page (system.view): every server process of the deployment, as their heartbeats in
// the state store describe them (GET /api/v1/nodes), refreshed every few seconds while shown.

import { api } from "./api.js";
import { language, localize, plain, t } from "/client/i18n.js";
import { clockTime, esc } from "./format.js";

const $ = (id) => document.getElementById(id);
export const REFRESH_MS = 2000;

/** "3 s", "4 min", "2 h 5 min": a length of time in seconds. */
function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return t("dashboard.time.seconds", { count: s });
  if (s < 3600) return t("dashboard.time.minutes", { count: Math.floor(s / 60) });
  const m = Math.floor((s % 3600) / 60);
  const h = Math.floor(s / 3600);
  return m ? t("dashboard.time.hoursMinutes", { h, m }) : t("dashboard.time.hours", { count: h });
}

function count(value) {
  return typeof value === "number" ? value.toLocaleString(language()) : "—";
}

function stateCell(node, now) {
  if (node.alive) return `<span class="badge node-alive">${esc(t("dashboard.nodes.alive"))}</span>`;
  const since = t("dashboard.nodes.deadSince", { time: clockTime(node.last_beat), ago: span(now - node.last_beat) });
  return `<span class="badge node-dead">${esc(t("dashboard.nodes.dead"))}</span> <span class="muted">${esc(since)}</span>`;
}

function subscriptionCell(node) {
  const subscribed = node.info.subscribed;
  if (subscribed === undefined) return "—";
  const text = esc(t(subscribed ? "dashboard.nodes.subscribed" : "dashboard.nodes.notSubscribed"));
  if (!node.alive) return `<span class="muted">${esc(t("dashboard.nodes.lastKnown", { state: t(subscribed ? "dashboard.nodes.subscribed" : "dashboard.nodes.notSubscribed") }))}</span>`;
  return subscribed ? `<span class="badge node-alive">${text}</span>` : `<span class="badge node-dead">${text}</span>`;
}

function row(node, now) {
  const info = node.info ?? {};
  const started = typeof info.started_at === "number" ? info.started_at : null;
  const uptime = started !== null && node.alive ? ` <span class="muted">${esc(t("dashboard.nodes.uptime", { span: span(now - started) }))}</span>` : "";
  return `<tr data-node="${esc(node.id)}" data-alive="${node.alive}">
    <td class="mono" data-col="id">${esc(node.id)}${node.this ? ` <span class="flag" title="${esc(t("dashboard.nodes.thisTitle"))}">${esc(t("dashboard.nodes.this"))}</span>` : ""}</td>
    <td data-col="process">${esc(info.host ?? "—")} <span class="muted mono">${esc(t("dashboard.nodes.pid", { pid: info.pid ?? "—" }))}</span></td>
    <td data-col="state">${stateCell(node, now)}</td>
    <td class="num" data-col="candidates">${count(info.candidates)}</td>
    <td class="num" data-col="dashboards">${count(info.dashboards)}</td>
    <td data-col="subscription">${subscriptionCell({ ...node, info })}</td>
    <td class="num" data-col="backlog">${count(info.history_backlog)}</td>
    <td class="nowrap" data-col="started">${started !== null ? esc(clockTime(started)) : "—"}${uptime}</td>
    <td class="nowrap" data-col="last-beat">${esc(t("dashboard.nodes.ago", { span: span(now - node.last_beat) }))}</td>
  </tr>`;
}

function summary(nodes) {
  const alive = nodes.filter((n) => n.alive);
  const total = (key) => alive.reduce((sum, n) => sum + (typeof n.info?.[key] === "number" ? n.info[key] : 0), 0);
  const parts = [
    t("dashboard.nodes.aliveCount", { count: alive.length }),
    nodes.length > alive.length ? t("dashboard.nodes.deadCount", { count: nodes.length - alive.length }) : null,
    t("dashboard.nodes.candidateCount", { count: total("candidates") }),
    t("dashboard.nodes.dashboardCount", { count: total("dashboards") }),
  ];
  return parts.filter(Boolean).join(" · ");
}

/** Show the page; returns the function that stops its refreshing (called on navigation). */
export function showNodes() {
  let timer = null;
  let stopped = false;

  async function refresh() {
    let body;
    try {
      body = await api.nodes();
    } catch (err) {
      if (!stopped) plain($("nodes-status"), t("dashboard.nodes.loadFailed", { error: err.message }));
      return;
    }
    if (stopped) return;
    const { now, nodes } = body;
    $("nodes-summary").textContent = summary(nodes);
    plain($("nodes-status"), t("dashboard.nodes.updated", { time: clockTime(now), count: REFRESH_MS / 1000 }));
    $("nodes-rows").innerHTML =
      nodes.map((n) => row(n, now)).join("") ||
      `<tr><td colspan="9" class="empty-state">${esc(t("dashboard.nodes.empty"))}</td></tr>`;
  }

  async function loop() {
    await refresh();
    if (!stopped) timer = setTimeout(loop, REFRESH_MS);
  }

  localize($("nodes-status"), "dashboard.common.loading");
  loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
