// The Nodes page (system.view): every server process of the deployment, as their heartbeats in
// the state store describe them (GET /api/v1/nodes), refreshed every few seconds while shown.

import { api } from "./api.js";
import { clockTime, esc, plural } from "./format.js";

const $ = (id) => document.getElementById(id);
export const REFRESH_MS = 2000;

/** "3 s", "4 min", "2 h 5 min": a length of time in seconds. */
function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  const m = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h${m ? ` ${m} min` : ""}`;
}

function count(value) {
  return typeof value === "number" ? value.toLocaleString() : "—";
}

function stateCell(node, now) {
  if (node.alive) return `<span class="badge node-alive">Alive</span>`;
  return `<span class="badge node-dead">Dead</span> <span class="muted">since ${esc(clockTime(node.last_beat))} (${esc(span(now - node.last_beat))} ago)</span>`;
}

function subscriptionCell(node) {
  const subscribed = node.info.subscribed;
  if (subscribed === undefined) return "—";
  if (!node.alive) return `<span class="muted">${subscribed ? "Subscribed" : "Not subscribed"} (last known)</span>`;
  return subscribed ? `<span class="badge node-alive">Subscribed</span>` : `<span class="badge node-dead">Not subscribed</span>`;
}

function row(node, now) {
  const info = node.info ?? {};
  const started = typeof info.started_at === "number" ? info.started_at : null;
  const uptime = started !== null && node.alive ? ` <span class="muted">(up ${esc(span(now - started))})</span>` : "";
  return `<tr data-node="${esc(node.id)}" data-alive="${node.alive}">
    <td class="mono" data-col="id">${esc(node.id)}${node.this ? ` <span class="flag" title="This page's requests are answered by this process">this</span>` : ""}</td>
    <td data-col="process">${esc(info.host ?? "—")} <span class="muted mono">pid ${esc(info.pid ?? "—")}</span></td>
    <td data-col="state">${stateCell(node, now)}</td>
    <td class="num" data-col="candidates">${count(info.candidates)}</td>
    <td class="num" data-col="dashboards">${count(info.dashboards)}</td>
    <td data-col="subscription">${subscriptionCell({ ...node, info })}</td>
    <td class="num" data-col="backlog">${count(info.history_backlog)}</td>
    <td class="nowrap" data-col="started">${started !== null ? esc(clockTime(started)) : "—"}${uptime}</td>
    <td class="nowrap" data-col="last-beat">${esc(span(now - node.last_beat))} ago</td>
  </tr>`;
}

function summary(nodes) {
  const alive = nodes.filter((n) => n.alive);
  const total = (key) => alive.reduce((sum, n) => sum + (typeof n.info?.[key] === "number" ? n.info[key] : 0), 0);
  const parts = [
    `${plural(alive.length, "node")} alive`,
    nodes.length > alive.length ? `${nodes.length - alive.length} dead` : null,
    plural(total("candidates"), "candidate"),
    plural(total("dashboards"), "dashboard"),
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
      if (!stopped) $("nodes-status").textContent = `Could not load the nodes: ${err.message} (retrying)`;
      return;
    }
    if (stopped) return;
    const { now, nodes } = body;
    $("nodes-summary").textContent = summary(nodes);
    $("nodes-status").textContent = `Updated ${clockTime(now)}; refreshes every ${REFRESH_MS / 1000} s`;
    $("nodes-rows").innerHTML =
      nodes.map((n) => row(n, now)).join("") ||
      `<tr><td colspan="9" class="empty-state">No node has reported in the last hour.</td></tr>`;
  }

  async function loop() {
    await refresh();
    if (!stopped) timer = setTimeout(loop, REFRESH_MS);
  }

  $("nodes-status").textContent = "Loading…";
  loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
