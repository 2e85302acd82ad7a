// Incidents and time offline as the dashboard shows them (the server keeps them: see
// docs/protocol.md §4, `incidents`, `last_incident*`, `offline_seconds`, `offline_since`).

import { t } from "/client/i18n.js";
import { clockTime, duration, esc } from "./format.js";
import { offlineSeconds } from "./indicators.js";

const KINDS = new Set(["refused", "takeover", "dropped", "device_changed", "address_changed"]);

/** Kinds that need someone to look now (a second device, another tab). */
const URGENT = new Set(["refused", "takeover"]);

/** Incidents after this server time (epoch s) are new: not acknowledged by the user yet. */
let seenAt = 0;
/** The latest incident time this page has shown: acknowledging covers it whatever the clocks. */
let latestShown = 0;

export function setIncidentsSeenAt(epochSeconds) {
  // The page's estimate of the server clock can lag the server's own stamp by a little:
  // what the user has been shown is seen, even if it looks a moment in the "future".
  seenAt = Math.max(epochSeconds, latestShown);
}

/** The kind in words (dashboard.incident.<kind>). */
export function incidentLabel(kind) {
  return KINDS.has(kind) ? t(`dashboard.incident.${kind}`) : String(kind ?? "").replaceAll("_", " ");
}

export function incidentLevel(kind) {
  return URGENT.has(kind) ? "alert" : "warn";
}

/** Whether the session's latest incident came after the user last acknowledged them. */
export function isNewIncident(s) {
  if (!s.incidents || s.last_incident_at == null) return false;
  latestShown = Math.max(latestShown, s.last_incident_at);
  return s.last_incident_at > seenAt;
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
