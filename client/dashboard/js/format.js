// Small formatting helpers shared by the dashboard modules, in the page's language.

import { formatTime, has, t } from "/client/i18n.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for use inside HTML. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** A duration in ms as h:mm:ss or m:ss. */
export function duration(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** How long ago an epoch-seconds time was, short ("12 s ago", "4 min ago"). */
export function ago(epochSeconds, nowMs) {
  if (epochSeconds == null) return "—";
  const s = Math.max(0, Math.round(nowMs / 1000 - epochSeconds));
  if (s < 5) return t("dashboard.time.justNow");
  if (s < 60) return t("dashboard.time.secondsAgo", { count: s });
  if (s < 3600) return t("dashboard.time.minutesAgo", { count: Math.floor(s / 60) });
  if (s < 86400) return t("dashboard.time.hoursAgo", { count: Math.floor(s / 3600) });
  return t("dashboard.time.daysAgo", { count: Math.floor(s / 86400) });
}

/** An epoch-seconds time as a clock time with its time zone (with the date when not today). */
export function clockTime(epochSeconds) {
  return formatTime(epochSeconds);
}

/** A command's name ("Pause"); unknown actions as they are. */
export function actionLabel(action) {
  return has(`dashboard.action.${action}`) ? t(`dashboard.action.${action}`) : action;
}

/** A toast for a command applied to `count` sessions: "Paused 3 sessions". */
export function actionDone(action, count) {
  return has(`dashboard.done.${action}`)
    ? t(`dashboard.done.${action}`, { count })
    : t("dashboard.done.other", { action, count });
}

/** "3 sessions", in English only: kept for callers not yet on the catalogues. */
export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** A history entry's kind ("Open refused"); commands by their action name. */
export function eventLabel(kind) {
  return has(`dashboard.event.${kind}`) ? t(`dashboard.event.${kind}`) : actionLabel(kind);
}

/** A session status in the page's language ("awaiting" → "Waiting"…). */
export function statusLabel(status) {
  return has(`dashboard.status.${status}`) ? t(`dashboard.status.${status}`) : status;
}

/** A candidate alert or an irregularity category in words ("focus_lost" → "focus lost"). */
export function alertLabel(name) {
  const key = `dashboard.alert.${name}`;
  return has(key) ? t(key) : String(name ?? "").replaceAll("_", " ");
}

/** A role's name in the page's language (its id when the catalogues do not know it). */
export function roleName(role) {
  return has(`dashboard.role.${role}`) ? t(`dashboard.role.${role}`) : role;
}

/** A `datetime-local` input's value (the browser's local time) as ISO-8601 UTC, "" for none. */
export function localToIso(value) {
  if (!value) return "";
  const d = new Date(value); // no offset: parsed as local time
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}
