// Incidents and time offline as the dashboard shows them (the server keeps them: see
// docs/protocol.md §4, `incidents`, `last_incident*`, `offline_seconds`, `offline_since`).

import { t } from "/client/i18n.js";
import { clockTime, duration, esc } from "./format.js";
import { offlineSeconds } from "./indicators.js";

const KINDS = new Set(["refused", "takeover", "dropped", "device_changed", "address_changed"]);

/** Kinds that need someone to look now (a second device, another tab). */
const URGENT = new Set(["refused", "takeover"]);

/**
 * Incidents the user has not acknowledged yet ("new": filled badges), decided by the order of
 * the exam's events (docs/protocol.md §8), never by clocks: an incident is new when the page
 * applied the event that recorded it (a live delta, or one replayed after a reconnect) after
 * its first snapshot and after the user last acknowledged. What the first snapshot shows
 * happened before the user looked. Session id -> `seq` of the event that made it new.
 */
const unacknowledged = new Map();

/** A new exam on the page (its first snapshot is coming): nothing is new yet. */
export function resetIncidents() {
  unacknowledged.clear();
}

/** The event `seq` recorded an incident on the session (the page got it after its snapshot). */
export function noteIncident(sessionId, seq) {
  unacknowledged.set(sessionId, seq);
}

/**
 * A later snapshot replaced the page's sessions (it reconnected too late for the missed events):
 * a session with more incidents than the page had shown got some while the page was away, so
 * they are new; what was new stays new; a session no longer there is forgotten. `before(id)` is
 * the session as the page had it. The snapshot's `seq` is where all of them now stand (the
 * exam's counter may even have restarted, after the state store was rebuilt).
 */
export function resyncIncidents(sessions, before, seq) {
  const ids = new Set();
  for (const s of sessions) {
    ids.add(s.id);
    const grew = (s.incidents ?? 0) > (before(s.id)?.incidents ?? 0);
    if (grew || unacknowledged.has(s.id)) unacknowledged.set(s.id, seq);
  }
  for (const id of unacknowledged.keys()) if (!ids.has(id)) unacknowledged.delete(id);
}

/** The user has seen every incident the page applied up to the event `seq` (all, if null). */
export function acknowledgeIncidents(seq) {
  for (const [id, at] of unacknowledged) if (seq == null || at <= seq) unacknowledged.delete(id);
}

/** The kind in words (dashboard.incident.<kind>). */
export function incidentLabel(kind) {
  return KINDS.has(kind) ? t(`dashboard.incident.${kind}`) : String(kind ?? "").replaceAll("_", " ");
}

export function incidentLevel(kind) {
  return URGENT.has(kind) ? "alert" : "warn";
}

/** Whether the session got an incident since the page's snapshot and the user last acknowledged. */
export function isNewIncident(s) {
  return !!s.incidents && unacknowledged.has(s.id);
}

/** Sort value for "incidents first": the latest incident first, sessions without any last. */
export function incidentSort(s) {
  return s.incidents ? -(s.last_incident_at ?? 0) : 0;
}

/** The table cell: a badge with the count, the latest incident's label and time. */
export function incidentCell(s) {
  if (!s.incidents) return `<span class="muted">0</span>`;
  const fresh = isNewIncident(s) ? " new" : "";
  const text = esc(s.last_incident_text || incidentLabel(s.last_incident));
  const at = s.last_incident_at;
  const when = at == null ? "" : `<time class="sub incident-time" datetime="${new Date(at * 1000).toISOString()}">${esc(clockTime(at))}</time>`;
  return (
    `<span class="incident-badge k-${esc(s.last_incident)}${fresh}" title="${text}" aria-label="${esc(t(fresh ? "dashboard.incident.badgeNew" : "dashboard.incident.badge", { count: s.incidents }))}">${s.incidents}</span>` +
    `<span class="incident-text" title="${text}">${esc(incidentLabel(s.last_incident))}</span>${when}`
  );
}

/** The panel's lines: [catalogue key of the label, html] pairs. */
export function incidentDetails(s, nowMs) {
  const latest = s.incidents
    ? `${s.incidents} <span class="muted">· <span title="${esc(s.last_incident_text)}">${esc(incidentLabel(s.last_incident))}</span> · ${esc(clockTime(s.last_incident_at))}</span>`
    : "0";
  const ms = offlineSeconds(s, nowMs) * 1000;
  const ongoing = !s.connected && ["awaiting", "active", "paused"].includes(s.status) && ms > 0;
  const now = ongoing ? ` <span class="muted">(${esc(t("dashboard.incident.offlineNow"))})</span>` : "";
  return [
    ["dashboard.panel.incidents", latest],
    ["dashboard.panel.timeOffline", ms >= 1000 ? `${duration(ms)}${now}` : "—"],
  ];
}
